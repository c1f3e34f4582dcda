//! End-to-end transfers driving the `hyperblow` binary over real loopback sockets: our seeder
//! (`hyperblow seed`) to our leecher (`hyperblow download`) on every pairing of the two runtimes,
//! peers found through the test UDP and HTTP trackers of `hyperblow_tests::trackers`; partial
//! downloads, several leechers, resume after `kill -9` and after a full disk, and the exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{
    bin, download_args, exit_code, s, spawn, start_seeder, start_seeder_with, wait_json_event,
    Fixture, BOUND, DONE_WITHIN,
};
use hyperblow_tests::interop::{wait_for, ChildGuard, Signal};
use hyperblow_tests::trackers::TestTracker;
use serde_json::Value;

/// Files with awkward sizes for a 32 KiB piece: a 0-byte file, one smaller than a piece, and files
/// that straddle piece boundaries.
const FILES: &[(&str, usize)] = &[
    ("a/first.bin", 100_000),
    ("empty.txt", 0),
    ("small.txt", 1_000),
    ("b/c/straddle.bin", 70_001),
    ("last.bin", 33_333),
];
const PIECE: u32 = 32 * 1024;

fn fixture(name: &str, files: &[(&str, usize)], piece: u32, trackers: &[String]) -> Fixture {
    common::fixture(name, files, piece, trackers, 7919)
}

fn count_events(lines: &[Value], event: &str) -> usize {
    lines.iter().filter(|v| v["event"] == event).count()
}

fn wait_event(child: &ChildGuard, event: &str, timeout: Duration) -> Value {
    wait_json_event(child, event, timeout)
}

/// Starts `hyperblow seed` of the fixture and waits until its tracker knows it (when it has one).
fn seeder(fx: &Fixture, runtime: &str, tracker: Option<&TestTracker>) -> ChildGuard {
    let (seeder, added) = start_seeder(fx, runtime, tracker);
    assert_eq!(added["have_pieces"], added["total_pieces"], "{added}");
    seeder
}

/// The upload limit of the seeder that tests interrupting a download "half-way" use: the 16 MB
/// torrent takes at least 30 s from it, so the test's signal always lands mid-download however slow
/// the machine is (it waits for progress events first, never for a sleep).
const THROTTLE: &str = "512KiB";

/// A seeder limited to [`THROTTLE`] upload.
fn throttled_seeder(fx: &Fixture, runtime: &str) -> ChildGuard {
    let (seeder, added) = start_seeder_with(fx, runtime, None, &["--max-upload-rate", THROTTLE]);
    assert_eq!(added["have_pieces"], added["total_pieces"], "{added}");
    seeder
}

fn leech_args<'a>(fx: &'a Fixture, out: &'a Path, runtime: &'a str) -> Vec<&'a str> {
    download_args(
        &fx.torrent,
        out,
        &["--runtime", runtime, "--json", "--timeout", "20s"],
    )
}

fn assert_same_tree(files: &[(&str, usize)], a: &Path, b: &Path) {
    for (rel, len) in files {
        let want = std::fs::read(a.join(rel)).expect("read source");
        let got =
            std::fs::read(b.join(rel)).unwrap_or_else(|e| panic!("{}: {e}", b.join(rel).display()));
        assert_eq!(got.len(), *len, "{rel}");
        assert!(got == want, "{rel} differs");
    }
}

fn pairing(seed_rt: &str, leech_rt: &str, udp: bool) {
    let started = Instant::now();
    let tracker = if udp {
        TestTracker::udp()
    } else {
        TestTracker::http()
    }
    .expect("tracker");
    let fx = fixture("multi", FILES, PIECE, &[tracker.announce_url()]);
    let seeder = seeder(&fx, seed_rt, Some(&tracker));
    let out = fx.dir.path().join("out");
    let leecher = spawn(
        &format!("leech-{leech_rt}"),
        &leech_args(&fx, &out, leech_rt),
        fx.dir.path(),
    );
    let code = exit_code(&leecher, DONE_WITHIN);
    assert_eq!(code, 0, "leecher failed: {}", leecher.log_tail(20));
    assert_same_tree(FILES, &fx.payload, &out.join("multi"));
    let lines = leecher.json_lines();
    let pieces = (FILES.iter().map(|f| f.1).sum::<usize>() as u32).div_ceil(PIECE) as usize;
    assert_eq!(count_events(&lines, "piece_verified"), pieces);
    assert!(lines.iter().any(|v| v["event"] == "done"));
    // The leecher found the seeder through the tracker and told it `completed` and `stopped`.
    let log = tracker.announces();
    use hyperblow_core::tracker::AnnounceEvent as E;
    assert!(log.iter().any(|a| a.event == E::Completed), "{log:?}");
    assert!(
        log.iter().filter(|a| a.event == E::Stopped).count() >= 1,
        "{log:?}"
    );
    seeder.signal(Signal::INT).expect("SIGINT seeder");
    assert_eq!(exit_code(&seeder, BOUND), 130);
    eprintln!(
        "{seed_rt} -> {leech_rt} via {}: {:?}",
        if udp { "udp" } else { "http" },
        started.elapsed()
    );
}

#[test]
fn tokio_seeds_tokio_via_udp_tracker() {
    pairing("tokio", "tokio", true);
}

#[test]
fn tokio_seeds_async_std_via_http_tracker() {
    pairing("tokio", "async-std", false);
}

#[test]
fn async_std_seeds_tokio_via_http_tracker() {
    pairing("async-std", "tokio", false);
}

#[test]
fn async_std_seeds_async_std_via_udp_tracker() {
    pairing("async-std", "async-std", true);
}

#[test]
fn partial_download_with_only_writes_only_selected_files() {
    let tracker = TestTracker::http().expect("tracker");
    let fx = fixture("part", FILES, PIECE, &[tracker.announce_url()]);
    let seeder = seeder(&fx, "tokio", Some(&tracker));
    let out = fx.dir.path().join("out");
    // Select a/first.bin by its index as `hyperblow info` prints it. Its last piece straddles into
    // b/c/straddle.bin, which the storage may write sparsely (that piece must verify); files that
    // share no piece with the selection must not be created at all.
    let info = Command::new(bin())
        .args(["info", "--json", s(&fx.torrent)])
        .output()
        .expect("run info");
    let info: Value = serde_json::from_slice(&info.stdout).expect("info json");
    let index_of = |rel: &str| {
        info["files"]
            .as_array()
            .expect("files")
            .iter()
            .find(|f| f["path"] == format!("part/{rel}"))
            .and_then(|f| f["index"].as_u64())
            .unwrap_or_else(|| panic!("{rel} not in {info}"))
    };
    let only = index_of("a/first.bin").to_string();
    let mut args = leech_args(&fx, &out, "async-std");
    args.extend(["--only", &only]);
    let leecher = spawn("leech-only", &args, fx.dir.path());
    assert_eq!(
        exit_code(&leecher, DONE_WITHIN),
        0,
        "{}",
        leecher.log_tail(20)
    );
    assert_same_tree(&[FILES[0]], &fx.payload, &out.join("part"));
    for rel in ["empty.txt", "small.txt", "last.bin"] {
        assert!(
            !out.join("part").join(rel).exists(),
            "{rel} was not selected but exists"
        );
    }
    let lines = leecher.json_lines();
    let done = lines.iter().find(|v| v["event"] == "done").expect("done");
    assert_eq!(done["wanted_bytes"], FILES[0].1 as u64);
    // 100,000 bytes in 32 KiB pieces: exactly pieces 0..=3 were fetched.
    assert_eq!(count_events(&lines, "piece_verified"), 4);
    let bad = Command::new(bin())
        .args(["download", "--no-dht", s(&fx.torrent), "--only", "9"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("file 9 does not exist"));
    drop(seeder);
}

#[test]
fn three_leechers_from_one_seeder_and_scrape_counts_them() {
    let tracker = TestTracker::udp().expect("tracker");
    let fx = fixture("three", FILES, PIECE, &[tracker.announce_url()]);
    let seeder = seeder(&fx, "async-std", Some(&tracker));
    let leechers: Vec<(ChildGuard, PathBuf)> = ["tokio", "async-std", "tokio"]
        .iter()
        .enumerate()
        .map(|(i, rt)| {
            let out = fx.dir.path().join(format!("out{i}"));
            let args = leech_args(&fx, &out, rt);
            (spawn(&format!("leech{i}"), &args, fx.dir.path()), out)
        })
        .collect();
    for (l, out) in &leechers {
        assert_eq!(exit_code(l, DONE_WITHIN), 0, "{}", l.log_tail(20));
        assert_same_tree(FILES, &fx.payload, &out.join("three"));
    }
    // The tracker saw three completions; `hyperblow scrape` reports them (text and JSON).
    let out = Command::new(bin())
        .args(["scrape", s(&fx.torrent), "--json", "--timeout", "10s"])
        .output()
        .expect("run scrape");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let t = &v["trackers"][0];
    assert_eq!(t["completed"], 3, "{v}");
    assert_eq!(t["seeders"], 1, "{v}");
    let text = Command::new(bin())
        .args(["scrape", s(&fx.torrent)])
        .output()
        .expect("run scrape");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&tracker.announce_url()), "{text}");
    drop(seeder);
}

/// A torrent big enough that a debug build takes a while to fetch it.
const BIG: &[(&str, usize)] = &[("one.bin", 9_000_001), ("two.bin", 7_000_003)];
const BIG_PIECE: u32 = 16 * 1024;

fn big_pieces() -> usize {
    (BIG.iter().map(|f| f.1).sum::<usize>() as u32).div_ceil(BIG_PIECE) as usize
}

/// Starts a leecher of the big torrent with a manual peer, waits for `min_verified` pieces.
fn leech_big(
    fx: &Fixture,
    out: &Path,
    seed_port: u16,
    name: &str,
    min_verified: usize,
) -> ChildGuard {
    let peer = format!("127.0.0.1:{seed_port}");
    let mut args = leech_args(fx, out, "tokio");
    args.extend(["--peer", &peer]);
    let leecher = spawn(name, &args, fx.dir.path());
    wait_for("some pieces", DONE_WITHIN, &[&leecher], || {
        Ok((count_events(&leecher.json_lines(), "piece_verified") >= min_verified).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    leecher
}

fn seed_port(seeder: &ChildGuard) -> u16 {
    let added = wait_event(seeder, "added", DONE_WITHIN);
    added["listen"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("listen port")
}

#[test]
fn resume_after_sigkill_keeps_every_verified_piece() {
    let fx = fixture("big", BIG, BIG_PIECE, &[]);
    let slow = throttled_seeder(&fx, "tokio");
    let out = fx.dir.path().join("out");
    let first = leech_big(&fx, &out, seed_port(&slow), "leech-kill", 50);
    first.kill_now();
    let verified_first = count_events(&first.json_lines(), "piece_verified");
    let total = big_pieces();
    assert!(verified_first < total, "finished before the kill");
    // The restart fetches the rest at full speed.
    drop(slow);
    let seeder = seeder(&fx, "tokio", None);
    let port = seed_port(&seeder);

    let mut args = leech_args(&fx, &out, "async-std");
    let peer = format!("127.0.0.1:{port}");
    args.extend(["--peer", &peer]);
    let second = spawn("leech-restart", &args, fx.dir.path());
    assert_eq!(
        exit_code(&second, DONE_WITHIN),
        0,
        "{}",
        second.log_tail(20)
    );
    let lines = second.json_lines();
    let added = lines
        .iter()
        .find(|v| v["event"] == "added")
        .expect("added line");
    let have = added["have_pieces"].as_u64().expect("have") as usize;
    assert!(
        have >= verified_first,
        "restart found {have} pieces but {verified_first} were verified before the kill"
    );
    let fetched = count_events(&lines, "piece_verified");
    assert!(
        fetched <= total - verified_first,
        "fetched {fetched} pieces again; only {} were missing",
        total - verified_first
    );
    assert_eq!(have + fetched, total);
    assert_same_tree(BIG, &fx.payload, &out.join("big"));
}

#[test]
fn sigint_exits_130_with_a_resumable_state() {
    let fx = fixture("big", BIG, BIG_PIECE, &[]);
    let slow = throttled_seeder(&fx, "async-std");
    let out = fx.dir.path().join("out");
    let first = leech_big(&fx, &out, seed_port(&slow), "leech-int", 50);
    first.signal(Signal::INT).expect("SIGINT");
    assert_eq!(exit_code(&first, BOUND), 130, "{}", first.log_tail(10));
    let verified_first = count_events(&first.json_lines(), "piece_verified");
    assert!(std::fs::read_to_string(first.stderr_path())
        .unwrap_or_default()
        .contains("interrupted"));
    assert!(verified_first < big_pieces(), "finished before the SIGINT");
    drop(slow);
    let seeder = seeder(&fx, "async-std", None);
    let port = seed_port(&seeder);
    // A clean stop leaves a trusted resume file: the restart does not re-check the data.
    let mut args = leech_args(&fx, &out, "tokio");
    let peer = format!("127.0.0.1:{port}");
    args.extend(["--peer", &peer]);
    let second = spawn("leech-after-int", &args, fx.dir.path());
    assert_eq!(
        exit_code(&second, DONE_WITHIN),
        0,
        "{}",
        second.log_tail(20)
    );
    let lines = second.json_lines();
    let added = lines.iter().find(|v| v["event"] == "added").expect("added");
    assert_eq!(added["start"], "resumed", "{added}");
    assert!(added["have_pieces"].as_u64().expect("have") as usize >= verified_first);
    assert_eq!(count_events(&lines, "checking"), 0);
    assert_same_tree(BIG, &fx.payload, &out.join("big"));
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Unmounts the test's tmpfs when the test ends, however it ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_exits_4_naming_the_problem_and_keeps_verified_pieces() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let fx = fixture("big", BIG, BIG_PIECE, &[]);
    let seeder = seeder(&fx, "tokio", None);
    let port = seed_port(&seeder);
    let out = fx.dir.path().join("tiny");
    std::fs::create_dir_all(&out).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs", s(&out)])
        .status()
        .expect("run mount");
    if !mounted.success() {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _mount = Mount(out.clone());
    let mut args = leech_args(&fx, &out, "async-std");
    let peer = format!("127.0.0.1:{port}");
    args.extend(["--peer", &peer]);
    let first = spawn("leech-full", &args, fx.dir.path());
    assert_eq!(exit_code(&first, DONE_WITHIN), 4, "{}", first.log_tail(20));
    let stderr = std::fs::read_to_string(first.stderr_path()).unwrap_or_default();
    let error_line = stderr
        .lines()
        .find(|l| l.starts_with("hyperblow: error:"))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"));
    assert!(
        error_line.to_lowercase().contains("no space"),
        "{error_line}"
    );
    assert!(error_line.contains("big"), "names the file: {error_line}");
    let verified_first = count_events(&first.json_lines(), "piece_verified");
    assert!(verified_first > 0);

    // More space: the restart keeps what was verified and fetches only the rest.
    let remount = Command::new("mount")
        .args(["-o", "remount,size=64m", s(&out)])
        .status()
        .expect("remount");
    assert!(remount.success());
    let second = spawn("leech-more-space", &args, fx.dir.path());
    assert_eq!(
        exit_code(&second, DONE_WITHIN),
        0,
        "{}",
        second.log_tail(20)
    );
    let lines = second.json_lines();
    let added = lines.iter().find(|v| v["event"] == "added").expect("added");
    let have = added["have_pieces"].as_u64().expect("have") as usize;
    assert!(have >= verified_first, "{have} < {verified_first}");
    assert!(count_events(&lines, "piece_verified") <= big_pieces() - verified_first);
    assert_same_tree(BIG, &fx.payload, &out.join("big"));
}

#[test]
fn exit_codes_for_bad_torrent_no_peers_and_magnet() {
    let dir = tempfile::tempdir().expect("temp");
    let bad = dir.path().join("bad.torrent");
    std::fs::write(&bad, b"d4:infoi3ee").expect("write");
    let out = Command::new(bin())
        .args(["download", "--no-dht", s(&bad), "-o", s(dir.path())])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("hyperblow: error:") && err.lines().count() == 1,
        "{err}"
    );

    // A magnet link nobody serves: no metadata within the timeout.
    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567";
    let out = Command::new(bin())
        .args([
            "download",
            "--no-dht",
            magnet,
            "-o",
            s(dir.path()),
            "--bind",
            "127.0.0.1",
            "--timeout",
            "2s",
        ])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no metadata"));

    // A tracker that knows nobody: no peers within the timeout.
    // The run must end by itself after `--timeout`: waited for with a bound that only catches a
    // hang (a run that ignored the timeout would never end), never a wall-clock race.
    let tracker = TestTracker::udp().expect("tracker");
    let fx = fixture("lonely", FILES, PIECE, &[tracker.announce_url()]);
    let out = fx.dir.path().join("out");
    let lonely = spawn(
        "lonely",
        &download_args(&fx.torrent, &out, &["--timeout", "3s", "--quiet"]),
        fx.dir.path(),
    );
    assert_eq!(exit_code(&lonely, BOUND), 5, "{}", lonely.log_tail(20));
    let err = std::fs::read_to_string(lonely.stderr_path()).unwrap_or_default();
    assert!(err.contains("no peers"), "{err}");
    let stdout = std::fs::read_to_string(lonely.stdout_path()).unwrap_or_default();
    assert!(
        stdout.is_empty(),
        "--quiet prints nothing on stdout: {stdout}"
    );

    let help = Command::new(bin()).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    for code in ["0", "2", "3", "4", "5", "130"] {
        assert!(
            help.contains(&format!(" {code}  ")),
            "exit code {code} in --help"
        );
    }
}

#[test]
fn demo_runs_offline_and_verifies_the_copy() {
    let out = Command::new(bin())
        .args(["demo", "--size", "2000000", "--quiet"])
        .output()
        .expect("run demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("byte for byte") && text.contains("async-std"),
        "{text}"
    );
}

/// `--max-download-rate` on the leecher and `--max-upload-rate` on the seeder: over the first 10 s
/// of the transfer, as the binaries' own `progress` events count it, neither exceeds its limit by
/// more than 10% (an upper bound only: a busy machine may be slower).
#[test]
fn rate_limits_hold_end_to_end() {
    const DOWN: f64 = 768.0 * 1024.0;
    const UP: f64 = 1_000_000.0;
    let fx = fixture("big", BIG, BIG_PIECE, &[]);
    let (seeder, _) = start_seeder_with(&fx, "tokio", None, &["--max-upload-rate", "1MB"]);
    let out = fx.dir.path().join("out");
    let peer = format!("127.0.0.1:{}", seed_port(&seeder));
    let mut args = leech_args(&fx, &out, "async-std");
    args.extend(["--peer", &peer, "--max-download-rate", "768KiB"]);
    let leecher = spawn("leech-limited", &args, fx.dir.path());
    // Counters per progress line: (elapsed seconds, bytes).
    let series = |child: &ChildGuard, field: &str| -> Vec<(f64, f64)> {
        child
            .json_lines()
            .iter()
            .filter(|v| v["event"] == "progress")
            .filter_map(|v| Some((v["elapsed_secs"].as_f64()?, v[field].as_f64()?)))
            .collect()
    };
    // Wait until the leecher has moved bytes for 10 s (measured from its first non-zero line).
    let span = |pts: &[(f64, f64)]| {
        let start = pts.iter().find(|p| p.1 > 0.0).map(|p| p.0);
        start
            .and_then(|s| pts.last().map(|l| l.0 - s))
            .unwrap_or(0.0)
    };
    wait_for(
        "10 s of limited transfer",
        BOUND,
        &[&leecher, &seeder],
        || Ok((span(&series(&leecher, "downloaded")) >= 10.5).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Every window of 10 s or more between two progress lines (plus one block of slack).
    let check = |pts: &[(f64, f64)], rate: f64, what: &str| {
        for (i, a) in pts.iter().enumerate() {
            for b in &pts[i + 1..] {
                let secs = b.0 - a.0;
                if secs >= 10.0 {
                    let got = b.1 - a.1;
                    assert!(
                        got <= rate * secs * 1.1 + 16384.0,
                        "{what}: {got} bytes in {secs:.1} s, limit {rate} B/s"
                    );
                }
            }
        }
    };
    let down = series(&leecher, "downloaded");
    check(&down, DOWN, "leecher download");
    // The lower of the two limits decides the pace; something did flow.
    assert!(down.last().map_or(0.0, |l| l.1) > 0.0);
    wait_for("seeder progress", BOUND, &[&seeder], || {
        Ok((span(&series(&seeder, "uploaded")) >= 10.0).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    check(&series(&seeder, "uploaded"), UP, "seeder upload");
    check(
        &series(&seeder, "uploaded"),
        DOWN,
        "seeder upload to the limited leecher",
    );
}

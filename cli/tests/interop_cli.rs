//! The `hyperblow` binary against real software over 127.0.0.1 (the harness in the root package's
//! src/interop/): opentracker with a whitelist, libtorrent peers run by tests/interop/lt_peer.py.
//!
//! - `hyperblow download 'magnet:?xt=urn:btih:..&tr=..'` completes from a libtorrent seeder that it
//!   finds only through opentracker, once with the tracker's HTTP and once with its UDP announce
//!   URL, on both runtimes each; every file is compared byte for byte, and `--save-torrent` writes
//!   a .torrent with the same info-hash (and libtorrent's exact info bytes). The time to metadata
//!   and the total time, as the binary reports them in its `--json` events, are printed.
//! - `hyperblow seed <torrent> <data>` serves a libtorrent leecher that finds it through
//!   opentracker (from the .torrent on one runtime, from a magnet link on the other).
//!
//! The torrents are made by `mktorrent`, not by us. Every wait is bounded and every program is
//! stopped by its PID ([`ChildGuard`]). Missing tools fail loudly unless `HYPERBLOW_SKIP_INTEROP=1`
//! (and `CI` unset). Run times: `cargo test -p hyperblow-cli --test interop_cli -- --nocapture`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{s, spawn_hyperblow};
use hyperblow_core::metainfo::Metainfo;
use hyperblow_tests::fixture::{assert_files, tree, write_files};
use hyperblow_tests::interop::{
    free_port, mktorrent, require_libtorrent, require_tool, wait_for, ChildGuard, LtConfig, LtPeer,
    LtRole, LtSource, Opentracker, Signal, TorrentFile,
};
use serde_json::Value;

/// The bound on every wait for a tracker reply, metadata or a transfer.
const WAIT: Duration = Duration::from_secs(60);

/// The hard run-time bound of every program started here.
const BOUND: Duration = Duration::from_secs(120);

/// The files of the fixture (under its top directory): odd sizes, nesting, a piece that straddles
/// files.
const FILES: &[(&str, usize)] = &[
    ("big.bin", 600_001),
    ("docs/readme.txt", 1_234),
    ("docs/deep/straddle.bin", 70_003),
    ("tail.bin", 33_333),
];

/// Whether every program these tests need is installed (or skipping is allowed; see
/// `hyperblow_tests::interop::missing`).
fn tools_present() -> bool {
    require_tool("opentracker").is_some()
        && require_tool("mktorrent").is_some()
        && require_libtorrent().is_some()
}

/// A directory torrent made by `mktorrent` announcing to one tracker URL; 32 KiB pieces.
struct Fixture {
    dir: tempfile::TempDir,
    name: String,
    torrent: TorrentFile,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Fixture {
    fn new(name: &str, seed: u64, announce: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("seed").join(name);
        let files = tree(FILES, seed);
        write_files(&root, &files);
        let torrent = mktorrent(
            &root,
            &[announce],
            15,
            &dir.path().join(format!("{name}.torrent")),
        )
        .expect("mktorrent");
        Fixture {
            dir,
            name: name.to_owned(),
            torrent,
            files,
        }
    }

    fn seed_dir(&self) -> PathBuf {
        self.dir.path().join("seed")
    }

    fn total(&self) -> u64 {
        self.files.iter().map(|(_, d)| d.len() as u64).sum()
    }

    fn metainfo(&self) -> Metainfo {
        Metainfo::from_bytes(&fs::read(&self.torrent.path).expect("read .torrent"))
            .expect("mktorrent's .torrent parses")
    }

    /// Asserts that `dir/<name>/` holds every file byte for byte.
    fn assert_in(&self, dir: &Path) {
        assert_files(&dir.join(&self.name), &self.files);
    }
}

/// The tracker (whitelisting exactly the fixture's info-hash) and the fixture announcing to its
/// `kind` ("http" or "udp") URL; returns them and that URL.
fn tracker_and_fixture(kind: &str, seed: u64) -> (Opentracker, Fixture, String) {
    let tracker = Opentracker::start(&[], BOUND).expect("start opentracker");
    let url = match kind {
        "udp" => tracker.udp_announce_url(),
        _ => tracker.http_announce_url(),
    };
    let fx = Fixture::new(&format!("cli-{kind}-{seed}"), seed, &url);
    tracker
        .set_whitelist(&[fx.torrent.info_hash])
        .expect("whitelist the fixture");
    (tracker, fx, url)
}

/// The first `--json` event named `name`, or a panic quoting every line and the logs.
fn event<'a>(lines: &'a [Value], name: &str, child: &ChildGuard) -> &'a Value {
    lines
        .iter()
        .find(|v| v["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {lines:?}\n{}", child.log_tail(30)))
}

fn seconds(v: &Value) -> f64 {
    v["seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no seconds in {v}"))
}

/// A libtorrent seeder of the fixture, seeding and known to the tracker.
fn lt_seeder(fx: &Fixture, name: &str) -> Option<LtPeer> {
    let cfg = LtConfig::new(
        name,
        LtRole::Seed,
        LtSource::Torrent(fx.torrent.path.clone()),
        &fx.seed_dir(),
        free_port().expect("free port"),
        BOUND,
    );
    let seeder = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn libtorrent seeder")?;
    seeder
        .wait_seeding(WAIT)
        .expect("libtorrent checks its data");
    seeder
        .wait_tracker_reply(WAIT)
        .expect("libtorrent announced to the tracker");
    Some(seeder)
}

/// `hyperblow download <magnet with tr=url only>` on each runtime, from a libtorrent seeder.
fn download_from_libtorrent(kind: &str, seed: u64) {
    if !tools_present() {
        return;
    }
    let (tracker, fx, url) = tracker_and_fixture(kind, seed);
    let Some(seeder) = lt_seeder(&fx, &format!("lt-seed-{kind}")) else {
        return;
    };
    // No x.pe and no --peer: the only way to the seeder is the tracker.
    let link = fx.torrent.magnet(&[&url]);
    let want_raw = fx.metainfo().info.raw().to_vec();
    for rt in ["tokio", "async-std"] {
        let out = fx.dir.path().join(format!("out-{rt}"));
        let saved = fx.dir.path().join(format!("saved-{rt}.torrent"));
        let t0 = Instant::now();
        let leecher = spawn_hyperblow(
            &format!("hyperblow-download-{kind}-{rt}"),
            &[
                "download",
                "--no-dht",
                &link,
                "-o",
                s(&out),
                "--runtime",
                rt,
                "--bind",
                "127.0.0.1",
                "--save-torrent",
                s(&saved),
                "--json",
                "--timeout",
                "60s",
            ],
            fx.dir.path(),
            BOUND,
        );
        let status = leecher
            .wait_exit(WAIT + Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\n{}", seeder.process().log_tail(30)));
        let wall = t0.elapsed();
        assert_eq!(
            status.code(),
            Some(0),
            "hyperblow download ({rt}, {kind}) failed\n{}\n{}",
            leecher.log_tail(30),
            seeder.process().log_tail(30)
        );
        let lines = leecher.json_lines();
        let added = event(&lines, "added", &leecher);
        assert_eq!(added["magnet"], true, "{added}");
        assert_eq!(added["info_hash"], fx.torrent.info_hash.to_hex(), "{added}");
        assert_eq!(added["runtime"], rt, "{added}");
        let reply = event(&lines, "tracker_reply", &leecher);
        assert!(
            reply["url"].as_str().is_some_and(|u| u.contains(&url)),
            "{reply} is not from {url}"
        );
        let meta = event(&lines, "metadata", &leecher);
        assert_eq!(meta["name"], fx.name.as_str(), "{meta}");
        assert_eq!(meta["files"], FILES.len(), "{meta}");
        assert_eq!(meta["total_bytes"], fx.total(), "{meta}");
        assert_eq!(
            event(&lines, "storage_ready", &leecher)["start"],
            "fresh",
            "{lines:?}"
        );
        let done = event(&lines, "done", &leecher);
        assert_eq!(done["wanted_bytes"], fx.total(), "{done}");
        assert!(
            done["downloaded"].as_u64().unwrap_or(0) >= fx.total(),
            "{done}"
        );
        fx.assert_in(&out);
        // The saved .torrent: the same info-hash, and exactly the info bytes mktorrent wrote.
        let got = Metainfo::from_bytes(&fs::read(&saved).expect("--save-torrent wrote a file"))
            .expect("the saved .torrent parses");
        assert_eq!(got.info_hash(), fx.torrent.info_hash);
        assert!(got.info.raw() == want_raw.as_slice(), "info bytes differ");
        // From --json: `metadata.seconds` runs from adding the link to the metadata, `done.seconds`
        // from the storage being ready (after the metadata) to the last piece.
        let (to_meta, data) = (seconds(meta), seconds(done));
        println!(
            "[timing] libtorrent -> `hyperblow download` ({rt}) from a magnet link via {kind} \
             opentracker: metadata {to_meta:.3} s after adding the link, data {data:.3} s after \
             that, total {:.3} s (--json); process ran {wall:.2?}",
            to_meta + data
        );
    }
    drop(seeder);
    drop(tracker);
}

#[test]
fn download_magnet_from_libtorrent_via_http_tracker_on_both_runtimes() {
    download_from_libtorrent("http", 301);
}

#[test]
fn download_magnet_from_libtorrent_via_udp_tracker_on_both_runtimes() {
    download_from_libtorrent("udp", 302);
}

/// `hyperblow seed` on `rt`; a libtorrent leecher given the .torrent (or only a magnet link) finds
/// it through the tracker.
fn seed_to_libtorrent(kind: &str, rt: &str, magnet: bool, seed: u64) {
    if !tools_present() {
        return;
    }
    let (tracker, fx, url) = tracker_and_fixture(kind, seed);
    let t0 = Instant::now();
    let seeder = spawn_hyperblow(
        &format!("hyperblow-seed-{kind}-{rt}"),
        &[
            "seed",
            "--no-dht",
            s(&fx.torrent.path),
            s(&fx.seed_dir()),
            "--runtime",
            rt,
            "--bind",
            "127.0.0.1",
            "--json",
        ],
        fx.dir.path(),
        BOUND,
    );
    let added = wait_for(
        "hyperblow seed to add the torrent",
        WAIT,
        &[&seeder],
        || {
            Ok(seeder
                .json_lines()
                .into_iter()
                .find(|v| v["event"] == "added"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(added["have_pieces"], added["total_pieces"], "{added}");
    // Known to the tracker before the leecher asks (the leecher would re-announce anyway).
    wait_for(
        "hyperblow seed's tracker reply",
        WAIT,
        &[&seeder, tracker.process()],
        || {
            Ok(seeder
                .json_lines()
                .into_iter()
                .find(|v| v["event"] == "tracker_reply"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = fx.dir.path().join("lt-leech");
    let source = if magnet {
        LtSource::Magnet(fx.torrent.magnet(&[&url]))
    } else {
        LtSource::Torrent(fx.torrent.path.clone())
    };
    let cfg = LtConfig::new(
        &format!("lt-leech-{kind}"),
        LtRole::Leech,
        source,
        &out,
        free_port().expect("free port"),
        WAIT,
    );
    let t1 = Instant::now();
    let Some(leecher) = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn libtorrent leecher")
    else {
        return;
    };
    let own = leecher
        .wait_finished(WAIT, &[&seeder, tracker.process()])
        .expect("the libtorrent leecher finishes");
    let took = t1.elapsed();
    // lt_peer.py waited for libtorrent's writes before exiting (see the script).
    let flushed = leecher.events("flushed");
    assert_eq!(flushed.len(), 1, "{}", leecher.process().log_tail(30));
    fx.assert_in(&out);
    // Its own progress reports count everything libtorrent downloaded as uploaded.
    let uploaded = wait_for(
        "hyperblow seed to report the upload",
        BOUND,
        &[&seeder],
        || {
            Ok(seeder
                .json_lines()
                .into_iter()
                .filter(|v| v["event"] == "progress")
                .filter_map(|v| v["uploaded"].as_u64())
                .find(|u| *u >= fx.total()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Ctrl-C: the seeder stops cleanly (exit code 130, as for an interrupted run).
    seeder.signal(Signal::INT).expect("SIGINT hyperblow seed");
    let status = seeder.wait_exit(BOUND).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(130), "{}", seeder.log_tail(30));
    println!(
        "[timing] `hyperblow seed` ({rt}) -> libtorrent ({}) via {kind} opentracker: libtorrent \
         finished {own:.2} s after its start, flushed in {} s (process gone after {took:.2?}), \
         {uploaded} B uploaded; test {:.2?}",
        if magnet { "magnet link" } else { ".torrent" },
        flushed[0]["seconds"],
        t0.elapsed()
    );
}

#[test]
fn seed_to_libtorrent_torrent_file_via_http_tracker_tokio() {
    seed_to_libtorrent("http", "tokio", false, 401);
}

#[test]
fn seed_to_libtorrent_magnet_via_udp_tracker_async_std() {
    seed_to_libtorrent("udp", "async-std", true, 402);
}

/// `hyperblow scrape` of a torrent opentracker has not seen: over HTTP it answers `d5:filesdee`
/// (no entry for the torrent). That is an answer: zero counters and exit 0, not "no tracker
/// answered" and exit 5. Over UDP it answers zeros for the hash; same output.
#[test]
fn scrape_of_an_unregistered_torrent_reports_zeros_and_succeeds() {
    if !tools_present() {
        return;
    }
    for kind in ["http", "udp"] {
        let (_tracker, fx, url) = tracker_and_fixture(kind, 403);
        let out = std::process::Command::new(common::bin())
            .args(["scrape", "--json", "--timeout", "30s", s(&fx.torrent.path)])
            .output()
            .expect("run hyperblow scrape");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{kind}: stdout {stdout}\nstderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(&stdout).expect("scrape --json is JSON");
        let t = &v["trackers"][0];
        assert_eq!(t["url"], url.as_str(), "{v}");
        assert_eq!(
            (&t["seeders"], &t["leechers"], &t["completed"]),
            (&Value::from(0), &Value::from(0), &Value::from(0)),
            "{kind}: {v}"
        );
    }
}

/// Dual-stack by default (no `--bind`): `hyperblow download` dials a libtorrent seeder that listens
/// on `[::1]` only, over IPv6; `hyperblow seed` accepts a libtorrent leecher (also on `[::1]`) that
/// dials it at `[::1]`. No tracker: the peers are given (the torrent's announce URL is dead).
#[test]
fn dual_stack_by_default_with_libtorrent_on_ipv6_loopback() {
    if !tools_present() {
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host has no IPv6 loopback");
        return;
    }
    let dead = format!("http://127.0.0.1:{}/announce", free_port().expect("port"));
    let fx = Fixture::new("cli-v6", 404, &dead);
    let v6: std::net::IpAddr = "::1".parse().expect("::1");

    // Hyperblow leeches from libtorrent on [::1].
    let mut cfg = LtConfig::new(
        "lt-seed-v6",
        LtRole::Seed,
        LtSource::Torrent(fx.torrent.path.clone()),
        &fx.seed_dir(),
        free_port().expect("free port"),
        BOUND,
    );
    cfg.listen_ip = v6;
    let Some(seeder) = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn libtorrent seeder") else {
        return;
    };
    seeder
        .wait_seeding(WAIT)
        .expect("libtorrent checks its data");
    assert!(seeder.addr().is_ipv6());
    let out = fx.dir.path().join("hb-leech");
    let peer = seeder.addr().to_string();
    let leecher = spawn_hyperblow(
        "hyperblow-leech-v6",
        &[
            "download",
            "--no-dht",
            s(&fx.torrent.path),
            "-o",
            s(&out),
            "--runtime",
            "async-std",
            "--peer",
            &peer,
            "--json",
            "--timeout",
            "60s",
        ],
        fx.dir.path(),
        BOUND,
    );
    let code = leecher
        .exit_code(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", seeder.process().log_tail(20)));
    assert_eq!(code, 0, "{}", leecher.log_tail(30));
    fx.assert_in(&out);
    drop(seeder);

    // libtorrent on [::1] leeches from Hyperblow's default (dual-stack) listener.
    let hb = spawn_hyperblow(
        "hyperblow-seed-v6",
        &[
            "seed",
            "--no-dht",
            s(&fx.torrent.path),
            s(&fx.seed_dir()),
            "--runtime",
            "tokio",
            "--json",
        ],
        fx.dir.path(),
        BOUND,
    );
    let added = wait_for("hyperblow seed to add the torrent", WAIT, &[&hb], || {
        Ok(hb.json_lines().into_iter().find(|v| v["event"] == "added"))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let listen: std::net::SocketAddr = added["listen"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("listen address in {added}"));
    assert!(listen.ip().is_unspecified() && listen.is_ipv6(), "{listen}");
    let out = fx.dir.path().join("lt-leech-v6");
    let mut cfg = LtConfig::new(
        "lt-leech-v6",
        LtRole::Leech,
        LtSource::Torrent(fx.torrent.path.clone()),
        &out,
        free_port().expect("free port"),
        WAIT,
    );
    cfg.listen_ip = v6;
    cfg.connect = vec![std::net::SocketAddr::new(v6, listen.port())];
    let Some(lt) = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn libtorrent leecher") else {
        return;
    };
    lt.wait_finished(WAIT, &[&hb])
        .expect("the libtorrent leecher finishes");
    fx.assert_in(&out);
}

//! Magnet links against real software over 127.0.0.1 (the harness in src/interop/):
//! (a) Hyperblow, given only a magnet link, fetches the metadata from a libtorrent seeder and
//!     downloads the torrent; the peer comes from opentracker over HTTP, over UDP, or from `x.pe`;
//!     on both runtimes. The time to metadata and to completion is printed.
//! (b) A libtorrent leecher given only a magnet link fetches the metadata from a Hyperblow seeder
//!     (found through `x.pe`, or through opentracker) and completes.
//! Every file is compared byte for byte. The torrent (made by `mktorrent`) has 150 files with long
//! names, so its info dictionary spans two 16 KiB metadata pieces.
//!
//! Run times: `cargo test --test interop_magnet -- --nocapture`. Every wait is bounded; discovery
//! (DHT, LSD, UPnP, NAT-PMP) is off in every program.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::Metainfo;
use hyperblow_driver::engine::{Event, TorrentState};
use hyperblow_driver::{AddMagnetRequest, AddTorrentRequest, EventStream, SessionEvent, StartKind};
use hyperblow_tests::fixture::{self, assert_files, start, write_files, Rt};
use hyperblow_tests::interop::{
    free_port, mktorrent, payload, require_tool, LtConfig, LtPeer, LtRole, LtSource, Opentracker,
    TorrentFile,
};

/// The bound on every wait for metadata, a transfer or a tracker reply.
const WAIT: Duration = Duration::from_secs(60);

/// The hard run-time bound of every real program started here.
const PROGRAM_BOUND: Duration = Duration::from_secs(120);

/// Files with long names in the fixture (they make the info dictionary larger than 16 KiB).
const SMALL_FILES: usize = 150;

fn tools_present() -> bool {
    ["opentracker", "mktorrent"]
        .iter()
        .all(|t| require_tool(t).is_some())
}

/// A directory torrent made by `mktorrent`: `seed/magnetic/` holds one 700 KB file and
/// [`SMALL_FILES`] small ones with long names; 32 KiB pieces.
struct Fixture {
    dir: tempfile::TempDir,
    torrent: TorrentFile,
    /// (path under the torrent's directory, content).
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Fixture {
    fn new(seed: u64, announce: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seed/magnetic");
        fs::create_dir_all(&root).unwrap();
        let mut files = vec![(PathBuf::from("big.bin"), payload(700_001, seed))];
        for i in 0..SMALL_FILES {
            let name = format!(
                "notes/a-small-file-with-a-long-name-to-make-the-info-dictionary-bigger-{i:04}.txt"
            );
            files.push((PathBuf::from(name), payload(100 + i * 37, seed ^ i as u64)));
        }
        write_files(&root, &files);
        let torrent = mktorrent(&root, announce, 15, &dir.path().join("magnetic.torrent"))
            .expect("mktorrent");
        let meta = Metainfo::from_bytes(&fs::read(&torrent.path).unwrap()).unwrap();
        assert!(
            meta.info.raw().len() > 16 * 1024,
            "info dictionary of {} bytes: one metadata piece only",
            meta.info.raw().len()
        );
        Fixture {
            dir,
            torrent,
            files,
        }
    }

    fn metainfo(&self) -> Metainfo {
        Metainfo::from_bytes(&fs::read(&self.torrent.path).unwrap()).unwrap()
    }

    fn seed_dir(&self) -> PathBuf {
        self.dir.path().join("seed")
    }

    /// Asserts that `dir/magnetic/` holds every file byte for byte.
    fn assert_in(&self, dir: &Path) {
        assert_files(&dir.join("magnetic"), &self.files);
    }

    /// The torrent's magnet link: the info-hash plus `extra` (`&tr=...`, `&x.pe=...`).
    fn magnet(&self, extra: &str) -> String {
        format!(
            "magnet:?xt=urn:btih:{}{extra}",
            self.torrent.info_hash.to_hex()
        )
    }
}

/// Percent-encodes a tracker URL for a `tr=` parameter.
fn tr(url: &str) -> String {
    format!(
        "&tr={}",
        hyperblow_core::tracker::http::percent_encode(url.as_bytes())
    )
}

/// Waits for an event matching `want`, failing after [`WAIT`] with the events seen.
fn wait_event(
    events: &mut EventStream,
    logs: &dyn Fn() -> String,
    want: impl FnMut(&SessionEvent) -> bool,
) -> Vec<SessionEvent> {
    fixture::wait_event(events, WAIT, logs, want)
}

/// A libtorrent seeder of `fx`, checked and (with a tracker in the torrent) announced.
fn lt_seeder(fx: &Fixture, name: &str, wait_tracker: bool) -> Option<LtPeer> {
    let cfg = LtConfig::new(
        name,
        LtRole::Seed,
        LtSource::Torrent(fx.torrent.path.clone()),
        &fx.seed_dir(),
        free_port().unwrap(),
        PROGRAM_BOUND,
    );
    let seeder = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn seeder")?;
    seeder.wait_seeding(WAIT).expect("seeder checks its data");
    if wait_tracker {
        seeder
            .wait_tracker_reply(WAIT)
            .expect("seeder announced to the tracker");
    }
    Some(seeder)
}

/// Hyperblow on `rt` downloads `fx` from `link` alone; returns (time to metadata, time to done).
fn hyperblow_leech(
    fx: &Fixture,
    rt: Rt,
    seed: u64,
    link: &str,
    others: &[&LtPeer],
) -> (Duration, Duration) {
    let out = fx.dir.path().join(format!("leech-{rt:?}-{seed}"));
    fs::create_dir_all(&out).unwrap();
    let logs = || {
        others
            .iter()
            .map(|p| p.process().log_tail(30))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let session = start(rt, seed);
    let mut events = session.events();
    let link = MagnetLink::parse(link).expect("a valid link");
    let t0 = Instant::now();
    let added = session
        .add_magnet(AddMagnetRequest::new(link, &out))
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(added.info_hash, fx.torrent.info_hash);
    wait_event(
        &mut events,
        &logs,
        |e| matches!(e, SessionEvent::Engine(Event::MetadataReceived { torrent, .. }) if *torrent == added.id),
    );
    let to_metadata = t0.elapsed();
    let seen = wait_event(
        &mut events,
        &logs,
        |e| matches!(e, SessionEvent::Engine(Event::TorrentCompleted(t)) if *t == added.id),
    );
    let to_done = t0.elapsed();
    assert!(seen.iter().any(|e| matches!(
        e,
        SessionEvent::MagnetReady(a) if a.id == added.id && a.start == StartKind::Fresh
    )));
    let stats = session.stats().wait_timeout(WAIT).unwrap();
    assert_eq!(stats[0].state, TorrentState::Seeding);
    assert_eq!(stats[0].files.len(), SMALL_FILES + 1);
    // The metadata saved as a .torrent has the same info-hash (and libtorrent's exact bytes).
    let saved = session
        .torrent_file(added.id)
        .wait_timeout(WAIT)
        .unwrap()
        .expect("metadata known");
    let parsed = Metainfo::from_bytes(&saved).expect("saved .torrent parses");
    assert_eq!(parsed.info.info_hash(), fx.torrent.info_hash);
    assert_eq!(parsed.info.raw(), fx.metainfo().info.raw());
    session.shutdown().wait_timeout(WAIT).unwrap();
    fx.assert_in(&out);
    (to_metadata, to_done)
}

/// (a): a libtorrent seeder; Hyperblow leechers on both runtimes with only `link_extra` in the link.
fn from_libtorrent(kind: &str, seed: u64) {
    if !tools_present() {
        return;
    }
    let tracker = Opentracker::start(&[], PROGRAM_BOUND).expect("start opentracker");
    let url = match kind {
        "udp" => tracker.udp_announce_url(),
        _ => tracker.http_announce_url(),
    };
    let fx = Fixture::new(seed, &[&url]);
    tracker
        .set_whitelist(&[fx.torrent.info_hash])
        .expect("whitelist");
    let Some(seeder) = lt_seeder(&fx, &format!("lt-seed-magnet-{kind}"), true) else {
        return;
    };
    let extra = match kind {
        "x.pe" => format!("&x.pe={}", seeder.addr()),
        _ => tr(&url),
    };
    let link = fx.magnet(&extra);
    for (i, rt) in [Rt::Tokio, Rt::AsyncStd].into_iter().enumerate() {
        let (meta, done) = hyperblow_leech(&fx, rt, seed * 10 + i as u64, &link, &[&seeder]);
        println!(
            "[timing] libtorrent -> Hyperblow ({rt:?}) from a magnet link via {kind}: metadata \
             after {meta:.2?}, complete after {done:.2?}"
        );
    }
}

#[test]
fn hyperblow_magnet_from_libtorrent_via_http_tracker() {
    from_libtorrent("http", 101);
}

#[test]
fn hyperblow_magnet_from_libtorrent_via_udp_tracker() {
    from_libtorrent("udp", 102);
}

#[test]
fn hyperblow_magnet_from_libtorrent_via_x_pe() {
    from_libtorrent("x.pe", 103);
}

/// (b): a Hyperblow seeder on `rt`; a libtorrent leecher given only a magnet link.
fn to_libtorrent(kind: &str, rt: Rt, seed: u64) {
    if !tools_present() {
        return;
    }
    let tracker = Opentracker::start(&[], PROGRAM_BOUND).expect("start opentracker");
    let url = tracker.http_announce_url();
    let fx = Fixture::new(seed, &[&url]);
    tracker
        .set_whitelist(&[fx.torrent.info_hash])
        .expect("whitelist");
    let session = start(rt, seed);
    let mut events = session.events();
    let added = session
        .add_torrent(AddTorrentRequest::new(fx.metainfo(), fx.seed_dir()))
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(added.have_pieces, added.total_pieces);
    let ours: SocketAddr = session.listen_addr();
    let extra = match kind {
        "x.pe" => format!("&x.pe={ours}"),
        _ => {
            // The seeder is known to the tracker before the leecher asks.
            wait_event(&mut events, &String::new, |e| {
                matches!(e, SessionEvent::Engine(Event::TrackerReply { .. }))
            });
            tr(&url)
        }
    };
    let out = fx.dir.path().join("lt-leech");
    // The script flushes libtorrent's disk cache before it exits (see lt_peer.py), so the files
    // are complete once the process is gone.
    let cfg = LtConfig::new(
        &format!("lt-leech-magnet-{kind}-{rt:?}"),
        LtRole::Leech,
        LtSource::Magnet(fx.magnet(&extra)),
        &out,
        free_port().unwrap(),
        WAIT,
    );
    let t0 = Instant::now();
    let Some(leecher) = LtPeer::spawn(&cfg, fx.dir.path()).expect("spawn leecher") else {
        return;
    };
    let own = leecher
        .wait_finished(WAIT, &[tracker.process()])
        .expect("libtorrent leecher finishes");
    let took = t0.elapsed();
    let stats = session.stats().wait_timeout(WAIT).unwrap();
    assert!(
        stats[0].uploaded >= fx.files.iter().map(|(_, d)| d.len() as u64).sum::<u64>(),
        "uploaded {}",
        stats[0].uploaded
    );
    session.shutdown().wait_timeout(WAIT).unwrap();
    fx.assert_in(&out);
    println!(
        "[timing] Hyperblow ({rt:?}) -> libtorrent from a magnet link via {kind}: libtorrent \
         finished {own:.2} s after its start (process gone after {took:.2?})"
    );
}

#[test]
fn libtorrent_magnet_from_hyperblow_tokio_via_x_pe() {
    to_libtorrent("x.pe", Rt::Tokio, 201);
}

#[test]
fn libtorrent_magnet_from_hyperblow_async_std_via_http_tracker() {
    to_libtorrent("http", Rt::AsyncStd, 202);
}

//! Hyperblow with the BitTorrent software people run: Debian's opentracker as the tracker,
//! libtorrent-rasterbar 2.0 (`tests/interop/lt_peer.py`) and Transmission 3.00 as peers, files made
//! by `mktorrent`. Hyperblow is driven through its library API ([`SessionHandle`]), and every
//! scenario runs once on tokio (`on_tokio::*`) and once on async-std (`on_async_std::*`). Every
//! transfer ends in a byte-for-byte comparison; every wait is bounded; every program listens on
//! 127.0.0.1 with discovery off and is stopped by its PID (see `src/interop/`).
//!
//! Scenarios:
//! 1. `udp_tracker_download`, `http_tracker_download`: Hyperblow finds a libtorrent seeder through
//!    opentracker (no peer hint) and downloads from it; a second torrent that is not on the tracker's
//!    whitelist is refused promptly (over UDP that refusal is opentracker's bare 8-byte announce reply);
//!    `SessionHandle::scrape` against opentracker over the same transport.
//! 2. `hyperblow_seeds`: a libtorrent leecher and a Transmission leecher download from Hyperblow.
//! 3. `mixed_swarm`: a libtorrent seeder; Hyperblow and Transmission leech at the same time.
//! 4. `multi_file_partial` (`mktorrent`, 32 KiB pieces, 0-byte files) and `multi_file_partial_16k`
//!    (`transmission-create`, 16 KiB pieces): odd file sizes, two files selected.
//! 5. `fast_seeder_chokes_mid_transfer`: the libtorrent seeder chokes everyone mid-transfer while
//!    our requests are queued (it rejects them: fast extension), then unchokes; no stall.
//!
//! Scenario 6 (the tracker dies half-way; back-off without spinning) is `tests/interop_tracker_loss.rs`,
//! a binary of its own because it measures this process's CPU time.
//!
//! Run times: `cargo test --test interop -- --nocapture` prints `[timing]` lines. For belt and braces
//! run it inside a namespace with only loopback: `scripts/netns.sh cargo test --test interop`
//! (`scripts/test.sh` does). `HYPERBLOW_SKIP_INTEROP=1` skips when the programs are missing (never in CI).
//!
//! Quirks met here (more in `tests/interop_harness.rs` and ARCHITECTURE.md, "Interop notes"):
//! - Transmission ignores 127.0.0.1 peers handed out by a tracker but accepts incoming
//!   connections, so whoever must serve it connects out to its peer port: Hyperblow via
//!   `SessionHandle::add_peer`, the libtorrent seeder via `--connect`.
//! - Transmission waits ~10 s (its rechoke period) before it asks a new peer for pieces, so its
//!   downloads take ≥ 10 s however small.
//! - opentracker lists the announcing peer itself in its replies (Hyperblow must not dial itself
//!   forever), and answers with a 1700 s interval, so a seeder is started (and known to the tracker)
//!   before its leechers.
//! - libtorrent, once out of unchoke slots, chokes at once and sends a `reject` for every request
//!   still queued from a fast-extension peer, except pieces in that peer's allowed-fast set, which it
//!   keeps serving while choked.

#[macro_use]
#[path = "interop/common.rs"]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    assert_same, load_meta, lt_leecher, lt_seeder, tools_present, Hb, Rt, SingleFile, WAIT,
};
use hyperblow_driver::engine::Event;
use hyperblow_driver::{AddTorrentRequest, StartKind};
use hyperblow_tests::interop::{
    mktorrent, require_tool, run_checked, write_payload, Opentracker, TorrentFile, Transmission,
};

on_both_runtimes!(
    udp_tracker_download,
    http_tracker_download,
    hyperblow_seeds,
    mixed_swarm,
    multi_file_partial,
    multi_file_partial_16k,
    fast_seeder_chokes_mid_transfer,
);

/// A distinct payload seed per scenario and runtime, so that no two tests share an info-hash.
fn seed_for(rt: Rt, scenario: u64) -> u64 {
    scenario * 10 + rt as u64
}

fn start_tracker() -> Opentracker {
    Opentracker::start(&[], common::PROGRAM_BOUND).expect("start opentracker")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Udp,
    Http,
}

/// Scenario 1: Hyperblow downloads from a libtorrent seeder it learned from opentracker only.
fn tracker_download(rt: Rt, kind: Kind) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let tracker = start_tracker();
    let url = match kind {
        Kind::Udp => tracker.udp_announce_url(),
        Kind::Http => tracker.http_announce_url(),
    };
    let scenario = if kind == Kind::Udp { 1 } else { 2 };
    let fx = SingleFile::new(
        "payload.bin",
        700 * 1024 + 321,
        seed_for(rt, scenario),
        15,
        &[&url],
    );
    // Not on the whitelist: opentracker refuses it.
    let refused = SingleFile::new(
        "refused.bin",
        20_000,
        seed_for(rt, scenario) + 1000,
        15,
        &[&url],
    );
    tracker
        .set_whitelist(&[fx.torrent.info_hash])
        .expect("whitelist");
    let Some(seeder) = lt_seeder(
        "lt-seed",
        &fx.torrent.path,
        &fx.seed_dir(),
        fx.dir.path(),
        true,
        |_| {},
    ) else {
        return;
    };
    let watched = [seeder.process(), tracker.process()];

    let hb = Hb::start(rt, |_| {});
    let t_add = Instant::now();
    // No `.peers(..)`: the only way to the seeder is the tracker.
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.leech_dir("hb")));
    assert_eq!(added.start, StartKind::Fresh);
    hb.wait_event("a tracker reply", WAIT, &watched, |e| {
        matches!(e, Event::TrackerReply { torrent, url: u, peers }
            if *torrent == added.id && *u == url && *peers >= 1)
    });
    let t_reply = t_add.elapsed();
    hb.wait_event(
        "a peer",
        WAIT,
        &watched,
        |e| matches!(e, Event::PeerConnected { torrent, .. } if *torrent == added.id),
    );
    let t_peer = t_add.elapsed();
    hb.wait_complete(added.id, WAIT, &watched);
    let t_done = t_add.elapsed();
    assert_same(
        &fx.dir.path().join("hb").join(&fx.name),
        &fx.data,
        "Hyperblow",
    );
    let stats = hb.stats(added.id);
    assert_eq!(stats.have_bytes, fx.data.len() as u64);
    let tr = stats
        .trackers
        .iter()
        .find(|t| t.url == url)
        .expect("the tracker in the stats");
    assert!(
        tr.last_announce.is_some() && tr.failures == 0,
        "tracker status: {tr:?}"
    );

    // Scrape (BEP 48 over HTTP, action 2 over UDP): the seeder and, once our `completed` announce
    // is through, Hyperblow count as seeds, and opentracker counts one completed download.
    let t_scrape = Instant::now();
    let stats_seen = common::poll_until(
        &format!("[{}] a scrape showing both seeds", rt.name()),
        Duration::from_secs(10),
        &watched,
        || {
            let answers = hb
                .session
                .scrape(added.id)
                .wait_timeout(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("scrape: {e}"));
            let [(u, result)] = answers.as_slice() else {
                panic!("one answer per tracker expected: {answers:?}");
            };
            assert_eq!(*u, url);
            let st = result
                .as_ref()
                .unwrap_or_else(|e| panic!("scrape of {url} failed: {e}"));
            (st.seeders >= 2 && st.completed >= 1).then_some(*st)
        },
    );
    let scrape_took = t_scrape.elapsed();
    // Each answer is also an event (it may trail the reply a little: another channel).
    hb.wait_event(
        "a ScrapeResult event",
        Duration::from_secs(5),
        &watched,
        |e| matches!(e, Event::ScrapeResult { torrent, url: u, result: Ok(_) } if *torrent == added.id && *u == url),
    );

    // The refused torrent: the tracker says no, and Hyperblow reports it promptly (over UDP this
    // needs the bare-header refusal handling; before it, the reply was dropped as malformed and the
    // announce retransmitted on BEP 15's 15 s schedule, then abandoned after 60 s).
    let t_refused = Instant::now();
    let r = hb.add(AddTorrentRequest::new(
        refused.meta.clone(),
        refused.leech_dir("hb"),
    ));
    let err = hb.wait_event(
        "the tracker to refuse a non-whitelisted torrent",
        Duration::from_secs(10),
        &watched,
        |e| matches!(e, Event::TrackerError { torrent, .. } if *torrent == r.id),
    );
    let Event::TrackerError { message, .. } = err else {
        unreachable!("matched above")
    };
    let expected = match kind {
        Kind::Udp => "refused",
        Kind::Http => "not authorized",
    };
    assert!(
        message.contains(expected),
        "refusal message {message:?} lacks {expected:?}"
    );
    eprintln!(
        "[timing] {} {kind:?} tracker download ({} KiB): tracker reply {t_reply:.2?}, first peer \
         {t_peer:.2?}, complete {t_done:.2?}; scrape {stats_seen:?} in {scrape_took:.2?}; refusal \
         reported in {:.2?}; test {:.2?}",
        rt.name(),
        fx.data.len() / 1024,
        t_refused.elapsed(),
        t0.elapsed()
    );
}

fn udp_tracker_download(rt: Rt) {
    tracker_download(rt, Kind::Udp);
}

fn http_tracker_download(rt: Rt) {
    tracker_download(rt, Kind::Http);
}

/// Scenario 2: Hyperblow seeds; a libtorrent leecher (through the tracker) and a Transmission
/// leecher (Hyperblow connects out to it) download from it.
fn hyperblow_seeds(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let tracker = start_tracker();
    let fx = SingleFile::new(
        "seeded.bin",
        600 * 1024 + 77,
        seed_for(rt, 3),
        15,
        &[&tracker.udp_announce_url(), &tracker.http_announce_url()],
    );
    tracker
        .set_whitelist(&[fx.torrent.info_hash])
        .expect("whitelist");
    let Some(tr) = Transmission::start(
        &format!("transmission-{}", rt.name()),
        common::PROGRAM_BOUND,
    )
    .expect("start transmission-daemon") else {
        return;
    };
    let hb = Hb::start(rt, |_| {});
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.seed_dir()));
    assert_eq!(added.start, StartKind::Checked);
    assert_eq!(added.have_pieces, added.total_pieces, "the seed has it all");
    // Known to the tracker before the leechers announce.
    hb.wait_event(
        "our announce to be answered",
        WAIT,
        &[tracker.process()],
        |e| matches!(e, Event::TrackerReply { torrent, .. } if *torrent == added.id),
    );
    let seed_ready = t0.elapsed();

    let t_leech = Instant::now();
    let lt = lt_leecher(
        "lt-leech",
        &fx.torrent.path,
        &fx.leech_dir("lt"),
        fx.dir.path(),
    );
    let id = common::scenario::hb_dials_transmission(&hb, added.id, &tr, &fx);
    let lt_own = lt
        .wait_finished(WAIT, &[tracker.process(), tr.process()])
        .expect("the libtorrent leecher finishes");
    let lt_took = t_leech.elapsed();
    let tr_took = tr
        .wait_complete(id, WAIT, &[tracker.process()])
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n{}",
                tr.info(id).unwrap_or_default(),
                hb.diagnostics()
            )
        });
    let tr_total = t_leech.elapsed();
    assert_same(
        &fx.dir.path().join("lt").join(&fx.name),
        &fx.data,
        "libtorrent",
    );
    assert_same(&tr.download_dir().join(&fx.name), &fx.data, "Transmission");
    let stats = hb.stats(added.id);
    assert!(
        stats.uploaded >= fx.data.len() as u64,
        "every byte came from Hyperblow at least once, uploaded {}",
        stats.uploaded
    );
    tr.stop_torrent(id)
        .expect("stop the torrent in transmission");
    eprintln!(
        "[timing] {} Hyperblow seeds {} KiB: announced {seed_ready:.2?}; libtorrent done \
         {lt_took:.2?} (its own {lt_own:.2} s); Transmission done {tr_total:.2?} \
         ({tr_took:.2?} after libtorrent); uploaded {} B; test {:.2?}",
        rt.name(),
        fx.data.len() / 1024,
        stats.uploaded,
        t0.elapsed()
    );
}

/// Scenario 3: a libtorrent seeder; Hyperblow and Transmission leech at the same time.
///
/// Hyperblow learns Transmission's address from the tracker and dials it, but on loopback the two
/// never trade: with the seeder already connected from 127.0.0.1, Transmission drops further
/// connections from that address (it keeps one peer per IP; with the seeder rate-limited so that
/// both were downloading at once, Hyperblow's only handshake was still the seeder's). So each
/// leecher is checked to finish from the seeder, side by side.
fn mixed_swarm(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let tracker = start_tracker();
    let fx = SingleFile::new(
        "mixed.bin",
        1024 * 1024 + 999,
        seed_for(rt, 4),
        15,
        &[&tracker.http_announce_url(), &tracker.udp_announce_url()],
    );
    tracker
        .set_whitelist(&[fx.torrent.info_hash])
        .expect("whitelist");
    let Some(tr) = Transmission::start(
        &format!("transmission-{}", rt.name()),
        common::PROGRAM_BOUND,
    )
    .expect("start transmission-daemon") else {
        return;
    };
    let id = tr
        .add_torrent(&fx.torrent.path)
        .expect("add to transmission");
    // Transmission would not dial the tracker's 127.0.0.1 peers: the seeder dials it.
    let Some(seeder) = lt_seeder(
        "lt-seed",
        &fx.torrent.path,
        &fx.seed_dir(),
        fx.dir.path(),
        true,
        |c| c.connect = vec![tr.peer_addr()],
    ) else {
        return;
    };
    let hb = Hb::start(rt, |_| {});
    let added = hb.add(AddTorrentRequest::new(fx.meta.clone(), fx.leech_dir("hb")));
    let watched = [seeder.process(), tracker.process(), tr.process()];
    let hb_took = hb.wait_complete(added.id, WAIT, &watched);
    let tr_took = tr
        .wait_complete(id, WAIT, &watched)
        .unwrap_or_else(|e| panic!("{e}\n{}", tr.info(id).unwrap_or_default()));
    assert_same(
        &fx.dir.path().join("hb").join(&fx.name),
        &fx.data,
        "Hyperblow",
    );
    assert_same(&tr.download_dir().join(&fx.name), &fx.data, "Transmission");
    let stats = hb.stats(added.id);
    let peers: Vec<String> = hb
        .engine_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::PeerConnected { addr, .. } => Some(addr.to_string()),
            _ => None,
        })
        .collect();
    tr.stop_torrent(id)
        .expect("stop the torrent in transmission");
    eprintln!(
        "[timing] {} mixed swarm {} KiB: Hyperblow done {hb_took:.2?} (uploaded {} B to the swarm), \
         Transmission done {:.2?} after Hyperblow started (Hyperblow's peers: {peers:?}); test {:.2?}",
        rt.name(),
        fx.data.len() / 1024,
        stats.uploaded,
        hb_took + tr_took,
        t0.elapsed()
    );
}

/// The files of scenario 4: a 0-byte file at the start, at the end and in the middle of the
/// order, files smaller than a 16 KiB piece, files straddling pieces, a nested directory.
const ODD_FILES: &[(&str, usize)] = &[
    ("a_empty.bin", 0),
    ("b_small.bin", 5_000),
    ("c_mid.bin", 40_000),
    ("d_tiny.bin", 100),
    ("e_big.bin", 150_001),
    ("f_empty.bin", 0),
    ("g_gap.bin", 70_000),
    ("h_last.bin", 30_007),
    ("sub/i_nested.bin", 20_000),
    ("z_empty.bin", 0),
];

/// The two files scenario 4 downloads.
const SELECTED: [&str; 2] = ["b_small.bin", "h_last.bin"];

/// Which program makes scenario 4's torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Maker {
    /// `mktorrent -l 15`: 32 KiB pieces, the smallest Debian's mktorrent 1.1 accepts (`-l 14` is
    /// refused: "The piece length must be a number between 15 and 28"). It lists 0-byte files.
    Mktorrent,
    /// `transmission-create -s 16`: 16 KiB pieces (a piece is one block). It leaves 0-byte files out
    /// of the torrent altogether.
    TransmissionCreate,
}

fn multi_file_partial(rt: Rt) {
    multi_file_partial_with(rt, Maker::Mktorrent);
}

fn multi_file_partial_16k(rt: Rt) {
    multi_file_partial_with(rt, Maker::TransmissionCreate);
}

/// Scenario 4: a multi-file torrent made by another program, with odd sizes (0-byte files, files
/// smaller than a piece, files straddling pieces, the smallest piece lengths); Hyperblow downloads two
/// of its files from a libtorrent seeder found through the tracker.
///
/// Storage writes whole pieces, so a piece that straddles a selected file and a skipped one puts its
/// bytes into the skipped file too (that file is created, holding just those bytes). The check is
/// therefore: the selected files are byte-exact; a skipped file that shares no piece with a selected
/// one does not exist (0-byte files included); a skipped file that does may exist, and then holds
/// the right bytes in the shared pieces; only pieces of the selected files were verified.
fn multi_file_partial_with(rt: Rt, maker: Maker) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    let tracker = start_tracker();
    let dir = tempfile::Builder::new()
        .prefix("hb-interop-multi-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path().join("seed/odd");
    let mut content = std::collections::HashMap::new();
    let scenario = if maker == Maker::Mktorrent { 5 } else { 7 };
    for (i, (path, len)) in ODD_FILES.iter().enumerate() {
        let data = write_payload(
            &root.join(path),
            *len,
            seed_for(rt, scenario) * 100 + i as u64,
        )
        .expect("write a file");
        content.insert(path.to_string(), data);
    }
    let out_torrent = dir.path().join("odd.torrent");
    let (torrent, piece_length) = match maker {
        Maker::Mktorrent => (
            mktorrent(&root, &[&tracker.udp_announce_url()], 15, &out_torrent).expect("mktorrent"),
            32 * 1024,
        ),
        Maker::TransmissionCreate => {
            let Some(program) = require_tool("transmission-create") else {
                return;
            };
            run_checked(
                Command::new(program)
                    .args(["-s", "16", "-t", &tracker.udp_announce_url(), "-o"])
                    .arg(&out_torrent)
                    .arg(&root),
                Duration::from_secs(30),
            )
            .expect("transmission-create");
            (
                TorrentFile::load(&out_torrent).expect("load the torrent"),
                16 * 1024,
            )
        }
    };
    let meta = load_meta(&torrent.path);
    tracker
        .set_whitelist(&[torrent.info_hash])
        .expect("whitelist");
    let layout = meta.info.layout().clone();
    assert_eq!(layout.piece_length(), piece_length);
    // Paths under the torrent's directory (the layout's paths start with the torrent's name).
    let files: Vec<(String, u64, u64)> = layout
        .files()
        .iter()
        .map(|f| {
            (
                f.path.get(1..).unwrap_or_default().join("/"),
                f.offset,
                f.length,
            )
        })
        .collect();
    let listed: BTreeSet<&str> = files.iter().map(|(p, _, _)| p.as_str()).collect();
    let made: BTreeSet<&str> = ODD_FILES
        .iter()
        .filter(|(_, len)| maker == Maker::Mktorrent || *len > 0)
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(listed, made, "the files {maker:?} put in the torrent");
    let wanted: Vec<bool> = files
        .iter()
        .map(|(p, _, _)| SELECTED.contains(&p.as_str()))
        .collect();
    let pl = u64::from(layout.piece_length());
    let pieces_of = |offset: u64, len: u64| -> BTreeSet<u64> {
        if len == 0 {
            BTreeSet::new()
        } else {
            (offset / pl..=(offset + len - 1) / pl).collect()
        }
    };
    let needed: BTreeSet<u64> = files
        .iter()
        .zip(&wanted)
        .filter(|(_, w)| **w)
        .flat_map(|((_, o, l), _)| pieces_of(*o, *l))
        .collect();

    let Some(seeder) = lt_seeder(
        "lt-seed",
        &torrent.path,
        &dir.path().join("seed"),
        dir.path(),
        true,
        |_| {},
    ) else {
        return;
    };
    let watched = [seeder.process(), tracker.process()];
    let hb = Hb::start(rt, |_| {});
    let out = dir.path().join("hb");
    let added = hb.add(AddTorrentRequest::new(meta.clone(), &out).wanted_files(wanted.clone()));
    let took = hb.wait_complete(added.id, WAIT, &watched);

    let mut created_straddlers = Vec::new();
    for ((path, offset, len), want) in files.iter().zip(&wanted) {
        let on_disk = out.join("odd").join(path);
        let original = &content[path];
        if *want {
            assert_same(&on_disk, original, "Hyperblow (a selected file)");
            continue;
        }
        let shared: BTreeSet<u64> = pieces_of(*offset, *len)
            .intersection(&needed)
            .copied()
            .collect();
        if shared.is_empty() {
            assert!(
                !on_disk.exists(),
                "{path} was not selected and shares no piece with a selected file, yet it exists"
            );
            continue;
        }
        // A straddling piece's bytes were written into this skipped file.
        let Ok(got) = fs::read(&on_disk) else {
            continue;
        };
        created_straddlers.push(path.clone());
        for piece in shared {
            let from = (piece * pl).max(*offset) - offset;
            let to = ((piece + 1) * pl).min(offset + len) - offset;
            let (from, to) = (from as usize, to as usize);
            assert!(
                got.get(from..to) == original.get(from..to),
                "{path}: bytes {from}..{to} (from straddling piece {piece}) differ"
            );
        }
    }
    let stats = hb.stats(added.id);
    let wanted_bytes: u64 = SELECTED.iter().map(|p| content[*p].len() as u64).sum();
    assert_eq!(stats.wanted_bytes, wanted_bytes);
    assert_eq!(stats.have_bytes, wanted_bytes);
    let verified: BTreeSet<u64> = (0..layout.piece_count())
        .filter(|&i| stats.have.get(i))
        .map(u64::from)
        .collect();
    assert_eq!(
        verified, needed,
        "exactly the pieces of the selected files were fetched"
    );
    eprintln!(
        "[timing] {} multi-file partial, {maker:?} ({} files, {} of {} pieces): complete {took:.2?}; skipped \
         files holding straddling pieces: {created_straddlers:?}; test {:.2?}",
        rt.name(),
        files.len(),
        needed.len(),
        layout.piece_count(),
        t0.elapsed()
    );
}

/// Scenario 5: the libtorrent seeder (fast extension on, as always in libtorrent) chokes every peer
/// once it has uploaded ~300 KB, with our requests queued, and unchokes 3 s later. libtorrent rejects
/// each queued request (BEP 6) and may keep serving its allowed-fast pieces; Hyperblow must take the
/// rejects, re-request after the unchoke and finish soon after it. Its upload is rate-limited so that
/// the choke falls mid-transfer.
fn fast_seeder_chokes_mid_transfer(rt: Rt) {
    if !tools_present() {
        return;
    }
    let t0 = Instant::now();
    const CHOKE_FOR: Duration = Duration::from_secs(3);
    let fx = SingleFile::new("fast.bin", 1024 * 1024 + 5, seed_for(rt, 6), 15, &[]);
    let Some(seeder) = lt_seeder(
        "lt-seed-choking",
        &fx.torrent.path,
        &fx.seed_dir(),
        fx.dir.path(),
        false,
        |c| {
            c.extra_args = [
                "--upload-limit",
                "300000",
                "--choke-after",
                "300000",
                "--choke-for",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("{}", CHOKE_FOR.as_secs_f64())])
            .collect();
        },
    ) else {
        return;
    };
    let hb = Hb::start(rt, |_| {});
    let t_add = Instant::now();
    let added = hb.add(
        AddTorrentRequest::new(fx.meta.clone(), fx.leech_dir("hb")).peers(vec![seeder.addr()]),
    );
    let watched = [seeder.process()];

    // Watch the choke from our side: some snapshot during it shows the seeder choking us.
    let what = format!("[{}] the seeder to choke us mid-transfer", rt.name());
    let mut saw_choked_with_data_left = false;
    hyperblow_tests::interop::wait_for(&what, common::WAIT, &watched, || {
        let s = hb.stats(added.id);
        if s.peer_list.iter().any(|p| p.peer_choking) && s.have_bytes < s.wanted_bytes {
            saw_choked_with_data_left = !seeder.events("choke_all").is_empty();
        }
        Ok(saw_choked_with_data_left.then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", hb.diagnostics()));
    let choked_at = t_add.elapsed();
    hyperblow_tests::interop::wait_for(
        &format!("[{}] the seeder to unchoke", rt.name()),
        CHOKE_FOR + Duration::from_secs(10),
        &watched,
        || Ok(seeder.events("unchoke_all").into_iter().next()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", hb.diagnostics()));
    let unchoked_at = t_add.elapsed();
    // The rest (≤ ~750 KB at 300 KB/s) takes a few seconds; a client that sat on its rejected
    // requests would wait for its request timeout instead.
    let after = hb.wait_complete(added.id, Duration::from_secs(15), &watched);
    let done_at = t_add.elapsed();
    assert_same(
        &fx.dir.path().join("hb").join(&fx.name),
        &fx.data,
        "Hyperblow",
    );
    // Until the download completed (then both ends are seeds and part, as they should).
    let disconnects: Vec<_> = hb
        .engine_events()
        .into_iter()
        .take_while(|e| !matches!(e, Event::TorrentCompleted(_)))
        .filter(|e| matches!(e, Event::PeerDisconnected { .. }))
        .collect();
    assert!(
        disconnects.is_empty(),
        "the choke must not cost the connection: {disconnects:?}"
    );
    eprintln!(
        "[timing] {} fast-extension choke: choked at {choked_at:.2?}, unchoked at \
         {unchoked_at:.2?}, complete at {done_at:.2?} ({after:.2?} after the unchoke); test {:.2?}",
        rt.name(),
        t0.elapsed()
    );
}

//! Magnet links through the drivers over real loopback sockets: our seeder (a `.torrent`) to our
//! leecher given only a magnet link whose `x.pe` names the seeder, on both runtimes, byte-exact; the
//! fetched metadata saved as a `.torrent` with the same info-hash; files already in the download
//! directory checked once the metadata says what they are (and a resume file trusted); `so=`.
//!
//! Everything binds 127.0.0.1 on ephemeral ports, there is no tracker, and every wait is bounded.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::{Metainfo, TorrentBuilder};
use hyperblow_driver::engine::{AddError, Event, TorrentId, TorrentState};
use hyperblow_driver::{
    AddMagnetRequest, AddTorrentRequest, AddedTorrent, EventStream, RecvError, SessionConfig,
    SessionError, SessionEvent, SessionHandle, StartKind,
};

/// Longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Rt {
    Tokio,
    AsyncStd,
}

fn start(rt: Rt, seed: u64) -> SessionHandle {
    let c = SessionConfig {
        bind_addr: "127.0.0.1".parse().unwrap(),
        seed: Some(seed),
        worker_threads: 2,
        ..SessionConfig::default()
    };
    match rt {
        Rt::Tokio => hyperblow_tokio::start(c),
        Rt::AsyncStd => hyperblow_async_std::start(c),
    }
    .expect("session starts")
}

/// Deterministic, non-repeating test content.
fn content(len: usize, salt: u8) -> Vec<u8> {
    let mut x: u32 = 0x85eb_ca6b ^ u32::from(salt);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A multi-file torrent made with the core's builder, and each file's content (layout order).
struct Fixture {
    metainfo: Metainfo,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Fixture {
    fn new(name: &str, piece_length: u32, files: &[(&str, usize)]) -> Fixture {
        let spec: Vec<(Vec<String>, u64)> = files
            .iter()
            .map(|(p, len)| (p.split('/').map(str::to_owned).collect(), *len as u64))
            .collect();
        let mut hasher = TorrentBuilder::multi_file(name, spec)
            .piece_length(piece_length)
            .start()
            .unwrap();
        let entries = hasher.layout().files().to_vec();
        let mut out = Vec::new();
        for (i, f) in entries.iter().enumerate() {
            let data = content(f.length as usize, i as u8);
            hasher.update(&data).unwrap();
            out.push((f.path.iter().collect::<PathBuf>(), data));
        }
        let built = hasher.finish().unwrap();
        Fixture {
            metainfo: Metainfo::from_bytes(&built.bytes).unwrap(),
            files: out,
        }
    }

    /// Writes file `i` under `dir`.
    fn write_file(&self, dir: &Path, i: usize) {
        let (path, data) = &self.files[i];
        let full = dir.join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, data).unwrap();
    }

    fn write_to(&self, dir: &Path) {
        for i in 0..self.files.len() {
            self.write_file(dir, i);
        }
    }

    /// Asserts that `dir` holds file `i` byte for byte.
    fn assert_file(&self, dir: &Path, i: usize) {
        let (path, data) = &self.files[i];
        let got = fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(got == *data, "{} differs from the original", path.display());
    }

    fn assert_in(&self, dir: &Path) {
        for i in 0..self.files.len() {
            self.assert_file(dir, i);
        }
    }

    fn pieces(&self) -> u32 {
        self.metainfo.info.layout().piece_count()
    }

    /// A magnet link with only the info-hash and `x.pe` naming `peer`, plus `extra` parameters.
    fn link(&self, peer: std::net::SocketAddr, extra: &str) -> MagnetLink {
        let uri = format!(
            "magnet:?xt=urn:btih:{}&x.pe={peer}{extra}",
            self.metainfo.info_hash().to_hex()
        );
        MagnetLink::parse(&uri).unwrap()
    }
}

/// A 0-byte file, a file smaller than a piece, files straddling pieces (~1.6 MB, 25 pieces).
fn mixed() -> Fixture {
    Fixture::new(
        "mixed",
        64 * 1024,
        &[
            ("empty.dat", 0),
            ("docs/small.txt", 1_000),
            ("docs/straddle.bin", 300_001),
            ("data/big.bin", 1_200_000),
            ("data/tail.bin", 70_003),
        ],
    )
}

/// Waits for an event matching `want`, failing after [`WAIT`]; returns the events seen meanwhile.
fn wait_for(
    events: &mut EventStream,
    mut want: impl FnMut(&SessionEvent) -> bool,
) -> Vec<SessionEvent> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) => {
                let done = want(&e);
                seen.push(e);
                if done {
                    return seen;
                }
            }
            Err(RecvError::Empty) => panic!("timed out; events so far: {seen:?}"),
            Err(RecvError::Closed) => panic!("session ended; events so far: {seen:?}"),
        }
    }
}

fn completed(id: TorrentId) -> impl FnMut(&SessionEvent) -> bool {
    move |e| matches!(e, SessionEvent::Engine(Event::TorrentCompleted(t)) if *t == id)
}

/// The `MagnetReady` report among `seen`.
fn ready_of(seen: &[SessionEvent]) -> AddedTorrent {
    seen.iter()
        .find_map(|e| match e {
            SessionEvent::MagnetReady(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no MagnetReady in {seen:?}"))
}

fn verified(seen: &[SessionEvent]) -> u32 {
    seen.iter()
        .filter(|e| matches!(e, SessionEvent::Engine(Event::PieceVerified { .. })))
        .count() as u32
}

fn shutdown(session: &SessionHandle) {
    session.shutdown().wait_timeout(WAIT).expect("shutdown");
}

/// A seeder of `fx` on `rt` (its files written under `dir`).
fn seeder(rt: Rt, seed: u64, fx: &Fixture, dir: &Path) -> SessionHandle {
    fx.write_to(dir);
    let s = start(rt, seed);
    let added = s
        .add_torrent(AddTorrentRequest::new(fx.metainfo.clone(), dir))
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(added.have_pieces, fx.pieces());
    s
}

/// Our seeder on `seed_rt`, our leecher on `leech_rt` with only a magnet link naming the seeder.
fn magnet_transfer(seed_rt: Rt, leech_rt: Rt) {
    let fx = mixed();
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let seeder = seeder(seed_rt, 1, &fx, seed_dir.path());

    let leecher = start(leech_rt, 2);
    let mut events = leecher.events();
    let link = fx.link(seeder.listen_addr(), "&dn=shown+before+metadata");
    // Added paused: nothing can be known yet.
    let added = leecher
        .add_magnet(AddMagnetRequest::new(link, leech_dir.path()).paused(true))
        .wait_timeout(WAIT)
        .unwrap();
    assert_eq!(added.info_hash, fx.metainfo.info_hash());
    assert_eq!(
        leecher.torrent_file(added.id).wait_timeout(WAIT).unwrap(),
        None
    );
    let stats = leecher.stats().wait_timeout(WAIT).unwrap();
    assert_eq!(stats[0].name, "shown before metadata");
    assert_eq!(stats[0].state, TorrentState::Paused);
    // The same info-hash cannot be added twice, as a link or as a .torrent.
    let again = leecher.add_magnet(AddMagnetRequest::new(
        fx.link(seeder.listen_addr(), ""),
        leech_dir.path(),
    ));
    assert!(matches!(
        again.wait_timeout(WAIT),
        Err(SessionError::Engine(AddError::Duplicate(_)))
    ));
    let dup = leecher.add_torrent(AddTorrentRequest::new(
        fx.metainfo.clone(),
        leech_dir.path(),
    ));
    assert!(matches!(
        dup.wait_timeout(WAIT),
        Err(SessionError::Engine(AddError::Duplicate(_)))
    ));

    let started = Instant::now();
    leecher.resume(added.id).wait_timeout(WAIT).unwrap();
    let seen = wait_for(&mut events, |e| {
        matches!(e, SessionEvent::Engine(Event::MetadataReceived { .. }))
    });
    println!(
        "{seed_rt:?} -> {leech_rt:?}: metadata after {:?}",
        started.elapsed()
    );
    assert!(seen.iter().any(|e| matches!(
        e,
        SessionEvent::Engine(Event::MetadataReceived { torrent, info_hash })
            if *torrent == added.id && *info_hash == added.info_hash
    )));
    let seen = wait_for(&mut events, completed(added.id));
    let ready = ready_of(&seen);
    assert_eq!(ready.start, StartKind::Fresh);
    assert_eq!(ready.total_pieces, fx.pieces());
    assert_eq!(verified(&seen), fx.pieces());
    println!(
        "{seed_rt:?} -> {leech_rt:?}: complete after {:?}",
        started.elapsed()
    );

    let stats = leecher.stats().wait_timeout(WAIT).unwrap();
    assert_eq!(stats[0].state, TorrentState::Seeding);
    assert_eq!(stats[0].name, "mixed");
    let saved = leecher
        .torrent_file(added.id)
        .wait_timeout(WAIT)
        .unwrap()
        .expect("metadata known");
    let parsed = Metainfo::from_bytes(&saved).unwrap();
    assert_eq!(parsed.info_hash(), fx.metainfo.info_hash());
    assert_eq!(parsed.info.raw(), fx.metainfo.info.raw());

    shutdown(&leecher);
    shutdown(&seeder);
    fx.assert_in(leech_dir.path());
}

#[test]
fn magnet_from_tokio_seeder_to_async_std_leecher() {
    magnet_transfer(Rt::Tokio, Rt::AsyncStd);
}

#[test]
fn magnet_from_async_std_seeder_to_tokio_leecher() {
    magnet_transfer(Rt::AsyncStd, Rt::Tokio);
}

/// Files already in the download directory are checked once the metadata arrives, and only what is
/// missing is fetched; after a shutdown the same link over the same directory trusts the resume file.
#[test]
fn existing_files_are_checked_after_the_metadata_and_the_resume_file_is_trusted() {
    for (i, rt) in [Rt::Tokio, Rt::AsyncStd].into_iter().enumerate() {
        let fx = mixed();
        let seed_dir = tempfile::tempdir().unwrap();
        let leech_dir = tempfile::tempdir().unwrap();
        let seeder = seeder(rt, 10 + i as u64, &fx, seed_dir.path());
        // The leecher already has data/big.bin (most of the torrent) and the empty file.
        fx.write_file(leech_dir.path(), 0);
        fx.write_file(leech_dir.path(), 3);

        let leecher = start(rt, 20 + i as u64);
        let mut events = leecher.events();
        let added = leecher
            .add_magnet(AddMagnetRequest::new(
                fx.link(seeder.listen_addr(), ""),
                leech_dir.path(),
            ))
            .wait_timeout(WAIT)
            .unwrap();
        let seen = wait_for(&mut events, completed(added.id));
        let ready = ready_of(&seen);
        assert_eq!(ready.start, StartKind::Checked);
        assert!(
            ready.have_pieces > 0 && ready.have_pieces < fx.pieces(),
            "{ready:?}"
        );
        assert!(seen
            .iter()
            .any(|e| matches!(e, SessionEvent::Checking { .. })));
        // Only pieces verified after the check count: the ones found on disk are not fetched again.
        let at = seen
            .iter()
            .position(|e| matches!(e, SessionEvent::MagnetReady(_)))
            .unwrap();
        assert_eq!(verified(&seen[at..]), fx.pieces() - ready.have_pieces);
        shutdown(&leecher);
        fx.assert_in(leech_dir.path());

        // Again over the same directory: the resume file says everything is there.
        let leecher = start(rt, 30 + i as u64);
        let mut events = leecher.events();
        let added = leecher
            .add_magnet(AddMagnetRequest::new(
                fx.link(seeder.listen_addr(), ""),
                leech_dir.path(),
            ))
            .wait_timeout(WAIT)
            .unwrap();
        let seen = wait_for(&mut events, completed(added.id));
        let ready = ready_of(&seen);
        assert_eq!(ready.start, StartKind::Resumed);
        assert_eq!(ready.have_pieces, fx.pieces());
        assert_eq!(verified(&seen), 0);
        let stats = leecher.stats().wait_timeout(WAIT).unwrap();
        assert_eq!(stats[0].state, TorrentState::Seeding);
        shutdown(&leecher);
        shutdown(&seeder);
        fx.assert_in(leech_dir.path());
    }
}

/// `so=` in the link picks the files once the file list is known; a magnet torrent removed before
/// its metadata arrived leaves nothing behind.
#[test]
fn so_selection_and_removal_before_metadata() {
    let fx = mixed();
    let seed_dir = tempfile::tempdir().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let seeder = seeder(Rt::AsyncStd, 40, &fx, seed_dir.path());
    let leecher = start(Rt::Tokio, 41);
    let mut events = leecher.events();

    // Removed while paused (no metadata): nothing on disk.
    let gone = leecher
        .add_magnet(
            AddMagnetRequest::new(fx.link(seeder.listen_addr(), ""), leech_dir.path()).paused(true),
        )
        .wait_timeout(WAIT)
        .unwrap();
    assert!(matches!(
        leecher
            .set_wanted_files(gone.id, vec![true; 5])
            .wait_timeout(WAIT),
        Err(SessionError::Engine(AddError::MetadataPending(_)))
    ));
    leecher.remove(gone.id, true).wait_timeout(WAIT).unwrap();
    assert!(leecher.stats().wait_timeout(WAIT).unwrap().is_empty());
    assert!(matches!(
        leecher.torrent_file(gone.id).wait_timeout(WAIT),
        Err(SessionError::Engine(AddError::UnknownTorrent(_)))
    ));

    // Files 1 and 4: docs/small.txt and data/tail.bin.
    let added = leecher
        .add_magnet(AddMagnetRequest::new(
            fx.link(seeder.listen_addr(), "&so=1,4"),
            leech_dir.path(),
        ))
        .wait_timeout(WAIT)
        .unwrap();
    let seen = wait_for(&mut events, completed(added.id));
    assert_eq!(ready_of(&seen).start, StartKind::Fresh);
    let stats = leecher.stats().wait_timeout(WAIT).unwrap();
    let wanted: Vec<bool> = stats[0].files.iter().map(|f| f.wanted).collect();
    assert_eq!(wanted, vec![false, true, false, false, true]);
    assert_eq!(stats[0].have_bytes, stats[0].wanted_bytes);
    shutdown(&leecher);
    shutdown(&seeder);
    fx.assert_file(leech_dir.path(), 1);
    fx.assert_file(leech_dir.path(), 4);
    // Only the pieces of the two small files were fetched, not the 1.2 MB file between them.
    assert!(
        stats[0].downloaded < 4 * 64 * 1024,
        "downloaded {} bytes",
        stats[0].downloaded
    );
}

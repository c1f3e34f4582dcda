//! Magnet links through the drivers over real loopback sockets: our seeder (a `.torrent`) to our
//! leecher given only a magnet link whose `x.pe` names the seeder, on both runtimes, byte-exact; the
//! fetched metadata saved as a `.torrent` with the same info-hash; files already in the download
//! directory checked once the metadata says what they are (and a resume file trusted); `so=`.
//!
//! Everything binds 127.0.0.1 on ephemeral ports, there is no tracker, and every wait is bounded.

use std::path::Path;
use std::time::Instant;

use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::Metainfo;
use hyperblow_driver::engine::{AddError, Event, TorrentState};
use hyperblow_driver::{
    AddMagnetRequest, AddTorrentRequest, AddedTorrent, EventStream, SessionError, SessionEvent,
    SessionHandle, StartKind,
};
use hyperblow_tests::fixture::{completed, start, wait_for, Fixture, Rt, WAIT};

/// Adds `link` to `leecher` over `dir` and waits until it completes; returns the events seen
/// meanwhile.
fn complete_magnet(
    leecher: &SessionHandle,
    events: &mut EventStream,
    link: MagnetLink,
    dir: &Path,
) -> Vec<SessionEvent> {
    let added = leecher
        .add_magnet(AddMagnetRequest::new(link, dir))
        .wait_timeout(WAIT)
        .unwrap();
    wait_for(events, completed(added.id))
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
    let fx = Fixture::mixed();
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
        let fx = Fixture::mixed();
        let seed_dir = tempfile::tempdir().unwrap();
        let leech_dir = tempfile::tempdir().unwrap();
        let seeder = seeder(rt, 10 + i as u64, &fx, seed_dir.path());
        // The leecher already has data/big.bin (most of the torrent) and the empty file.
        fx.write_file(leech_dir.path(), 0);
        fx.write_file(leech_dir.path(), 3);

        let leecher = start(rt, 20 + i as u64);
        let mut events = leecher.events();
        let seen = complete_magnet(
            &leecher,
            &mut events,
            fx.link(seeder.listen_addr(), ""),
            leech_dir.path(),
        );
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
        let seen = complete_magnet(
            &leecher,
            &mut events,
            fx.link(seeder.listen_addr(), ""),
            leech_dir.path(),
        );
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
    let fx = Fixture::mixed();
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
    let seen = complete_magnet(
        &leecher,
        &mut events,
        fx.link(seeder.listen_addr(), "&so=1,4"),
        leech_dir.path(),
    );
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

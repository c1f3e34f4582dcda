//! Resume files: round trip, and every reason not to trust one.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::*;
use hyperblow_core::bitfield::Bitfield;
use hyperblow_core::InfoHash;
use hyperblow_storage::{resume_path, Storage, StorageErrorKind};

const HASH: InfoHash = InfoHash([0x5a; 20]);

/// A storage with pieces 0, 2, 4, 5 written and their resume file saved.
fn saved() -> (tempfile::TempDir, Storage, PathBuf, Bitfield) {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(
        &[
            ("a", 70, false),
            ("skipped", 60, false),
            ("b", 50, false),
            ("pad", 4, true),
        ],
        32,
    );
    let data = content(&l, 1);
    let s = storage(dir.path(), &l);
    s.set_wanted(&[true, false, true, false]);
    write_pieces(&s, &data, &[0, 2, 4, 5], 2);
    s.flush().unwrap();
    let mut have = Bitfield::new(l.piece_count());
    for p in [0, 2, 4, 5] {
        have.set(p);
    }
    let path = resume_path(dir.path(), &HASH);
    s.save_resume(&path, &HASH, &have).unwrap();
    (dir, s, path, have)
}

#[test]
fn round_trip() {
    let (dir, s, path, have) = saved();
    assert!(path.starts_with(dir.path().join(".hyperblow")));
    assert_eq!(s.load_resume(&path, &HASH), Some(have.clone()));
    // A fresh storage (after a restart) trusts it too, and no temporary file was left behind.
    let again = storage(dir.path(), s.layout());
    assert_eq!(again.load_resume(&path, &HASH), Some(have.clone()));
    let names: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // Saving again replaces it; a record never claims a piece that was not written and synced.
    let mut more = have.clone();
    write_pieces(&s, &content(s.layout(), 1), &[1], 3);
    more.set(1);
    let full = Bitfield::full(s.layout().piece_count());
    s.save_resume(&path, &HASH, &full).unwrap();
    assert_eq!(s.load_resume(&path, &HASH), Some(more));
}

/// After a restart, pieces from a trusted record count as durable; pieces found by hashing (they
/// may sit in the page cache only, written before a `kill -9`) do not until a flush covers them.
#[test]
fn a_record_claims_trusted_and_flushed_pieces_only() {
    let (dir, s, path, have) = saved();
    let again = storage(dir.path(), s.layout());
    assert_eq!(again.durable_pieces().count_ones(), 0);
    again.trust_durable(&have);
    again.found_unsynced(1);
    assert_eq!(again.durable_pieces(), have);
    // The save flushes first, so piece 1 is claimed too; piece 3 never was on disk.
    let mut want = have.clone();
    want.set(1);
    want.set(3);
    again.save_resume(&path, &HASH, &want).unwrap();
    want.clear(3);
    assert_eq!(again.load_resume(&path, &HASH), Some(want));
    assert_eq!(again.unsynced_bytes(), 0);
}

#[test]
fn a_changed_mtime_invalidates() {
    let (dir, s, path, _) = saved();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("t/b"))
        .unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::new(1_000_000, 5))
        .unwrap();
    drop(f);
    assert_eq!(s.load_resume(&path, &HASH), None);
}

#[test]
fn a_changed_size_invalidates() {
    let (dir, s, path, _) = saved();
    let target = dir.path().join("t/a");
    let before = fs::metadata(&target).unwrap().modified().unwrap();
    let f = fs::OpenOptions::new().write(true).open(&target).unwrap();
    f.set_len(71).unwrap();
    // Put the old mtime back so only the size differs.
    f.set_modified(before).unwrap();
    drop(f);
    assert_eq!(s.load_resume(&path, &HASH), None);
}

#[test]
fn a_file_appearing_or_vanishing_invalidates() {
    let (dir, s, path, have) = saved();
    // The skipped file was created only for its straddled part; "pad" never exists.
    assert!(dir.path().join("t/skipped").exists());
    assert!(!dir.path().join("t/pad").exists());
    fs::write(dir.path().join("t/pad"), [0u8; 4]).unwrap();
    assert_eq!(s.load_resume(&path, &HASH), None);
    fs::remove_file(dir.path().join("t/pad")).unwrap();
    assert_eq!(s.load_resume(&path, &HASH), Some(have));
    fs::remove_file(dir.path().join("t/b")).unwrap();
    assert_eq!(s.load_resume(&path, &HASH), None);
}

#[test]
fn another_torrent_or_layout_is_refused() {
    let (dir, s, path, _) = saved();
    assert_eq!(s.load_resume(&path, &InfoHash([0x5b; 20])), None);
    // Same info-hash claimed but a different piece count.
    let other = storage(dir.path(), &layout(&[("a", 70, false)], 32));
    assert_eq!(other.load_resume(&path, &HASH), None);
    // A bitfield of the wrong size is refused at save time.
    let e = s.save_resume(&path, &HASH, &Bitfield::new(3)).unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::InvalidRequest);
}

#[test]
fn truncated_or_corrupt_files_are_never_trusted() {
    let (_dir, s, path, have) = saved();
    let good = fs::read(&path).unwrap();
    for cut in 0..good.len() {
        fs::write(&path, &good[..cut]).unwrap();
        assert_eq!(s.load_resume(&path, &HASH), None, "cut at {cut}");
    }
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        fs::write(&path, &bad).unwrap();
        assert_eq!(s.load_resume(&path, &HASH), None, "byte {i} flipped");
    }
    let mut g = Gen::new(9);
    for len in [1usize, 10, 100, 1000] {
        let junk: Vec<u8> = (0..len).map(|_| g.next() as u8).collect();
        fs::write(&path, junk).unwrap();
        assert_eq!(s.load_resume(&path, &HASH), None);
    }
    fs::write(&path, &good).unwrap();
    assert_eq!(s.load_resume(&path, &HASH), Some(have));
    fs::remove_file(&path).unwrap();
    assert_eq!(s.load_resume(&path, &HASH), None);
}

/// Finding 6 (crash recovery): pieces written after the last save move the files' modification
/// times, so the strict load refuses the file; as a checkpoint it is still trusted while every file
/// keeps its size, and exactly the pieces written after it are the non-blank ones outside it.
#[test]
fn a_checkpoint_survives_later_writes_but_not_a_size_change() {
    let (dir, s, path, have) = saved();
    let data = content(s.layout(), 1);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("t/a"))
        .unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::new(2_000_000, 7))
        .unwrap();
    drop(f);
    write_pieces(&s, &data, &[1], 3);
    assert_eq!(s.load_resume(&path, &HASH), None, "strict: mtimes moved");
    let again = storage(dir.path(), s.layout());
    assert_eq!(
        again.load_resume_checkpoint(&path, &HASH),
        Some(have.clone())
    );
    let blank: Vec<u32> = (0..s.layout().piece_count())
        .filter(|&i| !have.get(i) && !again.piece_is_blank(i).unwrap())
        .collect();
    assert_eq!(
        blank,
        vec![1],
        "only the piece written after the checkpoint holds data"
    );
    // A file that changed size is not the file the checkpoint describes.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("t/b"))
        .unwrap();
    f.set_len(49).unwrap();
    drop(f);
    assert_eq!(again.load_resume_checkpoint(&path, &HASH), None);
}

/// Issue 18: a checkpoint's bitfield is taken before the save reads the files' times, and pieces go on
/// being written in between (or in the same clock tick after it). Such a piece is in the recorded
/// times but not in the bitfield, so a checkpoint trusted as it is would lose it after `kill -9`.
/// A checkpoint is therefore never trusted by [`Storage::load_resume`]; as a crash checkpoint the
/// piece is found among the non-blank pieces outside it. A clean save still is trusted.
#[test]
fn a_checkpoint_is_never_trusted_as_a_clean_record() {
    let (dir, s, path, have) = saved();
    let data = content(s.layout(), 1);
    // The bitfield `have` was taken; piece 1 is written before the save reads the files' times.
    write_pieces(&s, &data, &[1], 3);
    s.flush().unwrap();
    s.save_checkpoint(&path, &HASH, &have).unwrap();
    let again = storage(dir.path(), s.layout());
    assert_eq!(
        again.load_resume(&path, &HASH),
        None,
        "the times match, but a checkpoint may be older than them"
    );
    assert_eq!(
        again.load_resume_checkpoint(&path, &HASH),
        Some(have.clone())
    );
    let outside: Vec<u32> = (0..s.layout().piece_count())
        .filter(|&i| !have.get(i) && !again.piece_is_blank(i).unwrap())
        .collect();
    assert_eq!(outside, vec![1], "the piece written after `have` is found");
    // The same record saved clean (no write could run) is trusted as it is.
    s.save_resume(&path, &HASH, &have).unwrap();
    assert_eq!(again.load_resume(&path, &HASH), Some(have.clone()));
    assert_eq!(again.load_resume_checkpoint(&path, &HASH), Some(have));
    drop(dir);
}

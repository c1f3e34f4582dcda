//! Piece writes and block reads against real files in temporary directories.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use hyperblow_core::metainfo::Layout;
use hyperblow_storage::{
    check_pieces, PieceWrite, Storage, StorageConfig, StorageErrorKind, WorkerPool,
};

/// Reads random blocks (many straddling files) and compares them with the source.
fn assert_blocks_match(s: &Storage, data: &[u8], g: &mut Gen, rounds: usize) {
    let l = s.layout();
    for _ in 0..rounds {
        let p = g.below(u64::from(l.piece_count())) as u32;
        let plen = l.piece_len(p).unwrap();
        let begin = g.below(u64::from(plen)) as u32;
        let len = 1 + g.below(u64::from(plen - begin)) as u32;
        let got = s.read_block(p, begin, len).unwrap();
        let at = (l.piece_offset(p) + u64::from(begin)) as usize;
        assert_eq!(
            &got[..],
            &data[at..at + len as usize],
            "piece {p} begin {begin} len {len}"
        );
    }
}

/// Every non-padding file on disk is byte-exact.
fn assert_files_exact(s: &Storage, data: &[u8]) {
    for (i, f) in s.layout().files().iter().enumerate() {
        let path = s.file_path(i).unwrap();
        if f.padding {
            assert!(
                !path.exists(),
                "padding file {} was created",
                path.display()
            );
            continue;
        }
        let on_disk = fs::read(path).unwrap();
        assert_eq!(
            on_disk,
            &data[f.offset as usize..(f.offset + f.length) as usize],
            "{}",
            path.display()
        );
    }
}

#[test]
fn single_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let l = Layout::new(vec![(vec!["one.bin".to_string()], 1000, false)], 64).unwrap();
    let data = content(&l, 1);
    let s = storage(dir.path(), &l);
    write_pieces(&s, &data, &shuffled_pieces(&l, 2), 3);
    assert_eq!(fs::read(dir.path().join("one.bin")).unwrap(), data);
    assert_blocks_match(&s, &data, &mut Gen::new(4), 200);
    assert_eq!(
        s.read_piece(15).unwrap(),
        Bytes::copy_from_slice(&data[960..])
    );
    s.flush().unwrap();
}

#[test]
fn multi_file_round_trip_with_empty_and_small_files() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(
        &[
            ("a", 100, false),
            ("empty", 0, false),
            ("tiny", 7, false),
            ("sub-big", 300, false),
            ("one", 1, false),
            ("last", 64, false),
            ("trailing-empty", 0, false),
        ],
        32,
    );
    let data = content(&l, 10);
    let s = storage(dir.path(), &l);
    // Nothing exists before the first write.
    assert!(!dir.path().join("t").exists());
    write_pieces(&s, &data, &shuffled_pieces(&l, 11), 12);
    assert_files_exact(&s, &data);
    assert_eq!(fs::metadata(dir.path().join("t/empty")).unwrap().len(), 0);
    assert_eq!(
        fs::metadata(dir.path().join("t/trailing-empty"))
            .unwrap()
            .len(),
        0
    );
    assert_blocks_match(&s, &data, &mut Gen::new(13), 300);
    // A block over four files: the end of `a`, the empty file, all of `tiny`, the start of `sub-big`.
    let got = s.read_block(3, 0, 20).unwrap();
    assert_eq!(&got[..], &data[96..116]);
    s.flush().unwrap();
}

#[test]
fn sparse_preallocation_at_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(&[("a", 4 << 20, false), ("b", 10, false)], 1 << 16);
    let data = content(&l, 20);
    let s = storage(dir.path(), &l);
    write_pieces(&s, &data, &[0], 21);
    let meta = fs::metadata(dir.path().join("t/a")).unwrap();
    assert_eq!(meta.len(), 4 << 20);
    // Sparse: far fewer 512-byte blocks allocated than the 4 MiB length.
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} blocks allocated",
        meta.blocks()
    );
    // `b` was not touched yet.
    assert!(!dir.path().join("t/b").exists());
}

#[test]
fn skipped_files_only_get_the_straddled_parts() {
    let dir = tempfile::tempdir().unwrap();
    // a: 0..100, b: 100..400, c: 400..500; pieces of 64. Skip b.
    let l = layout(
        &[("a", 100, false), ("b", 300, false), ("c", 100, false)],
        64,
    );
    let data = content(&l, 30);
    let s = storage(dir.path(), &l);
    s.set_wanted(&[true, false, true]);
    let needed: Vec<u32> = s
        .wanted_pieces()
        .iter()
        .enumerate()
        .filter(|(_, w)| **w)
        .map(|(i, _)| i as u32)
        .collect();
    assert_eq!(needed, vec![0, 1, 6, 7]);
    write_pieces(&s, &data, &needed, 31);
    // A piece entirely inside the skipped file is refused and creates nothing new.
    let mut g = Gen::new(32);
    let b3 = blocks(&l, &data, 3, &mut g, 20);
    assert_eq!(s.write_piece(3, &b3).unwrap(), PieceWrite::NotWanted);
    let a = fs::read(dir.path().join("t/a")).unwrap();
    let c = fs::read(dir.path().join("t/c")).unwrap();
    assert_eq!(a, &data[0..100]);
    assert_eq!(c, &data[400..500]);
    // b exists (sparse, full length) with exactly the straddled parts: piece 1 = 64..128 holds
    // b[0..28], piece 6 = 384..448 holds b[284..300]; the rest reads as zeros.
    let b = fs::read(dir.path().join("t/b")).unwrap();
    assert_eq!(b.len(), 300);
    assert_eq!(&b[0..28], &data[100..128]);
    assert_eq!(&b[284..300], &data[384..400]);
    assert!(b[28..284].iter().all(|&x| x == 0));
}

#[test]
fn skipped_files_that_no_wanted_piece_touches_are_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(
        &[
            ("a", 64, false),
            ("b", 64, false),
            ("zero", 0, false),
            ("c", 64, false),
        ],
        64,
    );
    let data = content(&l, 40);
    let s = storage(dir.path(), &l);
    s.set_wanted(&[true, false, false, true]);
    write_pieces(&s, &data, &[0, 2], 41);
    assert!(dir.path().join("t/a").exists());
    assert!(dir.path().join("t/c").exists());
    assert!(!dir.path().join("t/b").exists());
    assert!(!dir.path().join("t/zero").exists());
    // Reading the skipped file's piece reports missing data and still creates nothing.
    let e = s.read_block(1, 0, 16).unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::NotFound);
    assert!(e.to_string().contains("t/b"), "{e}");
    assert!(!dir.path().join("t/b").exists());
    // Selecting the empty file later creates it with the next write (or on demand).
    s.set_wanted(&[true, true, true, true]);
    s.create_empty_files().unwrap();
    assert!(dir.path().join("t/zero").exists());
}

#[test]
fn padding_files_are_never_written_and_read_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(
        &[
            ("a", 50, false),
            (".pad/14", 14, true),
            ("b", 64, false),
            (".pad/30", 30, true),
        ],
        64,
    );
    let data = content(&l, 50);
    let s = storage(dir.path(), &l);
    write_pieces(&s, &data, &shuffled_pieces(&l, 51), 52);
    assert_files_exact(&s, &data);
    let got = s.read_block(0, 40, 24).unwrap();
    assert_eq!(&got[..10], &data[40..50]);
    assert!(got[10..].iter().all(|&x| x == 0));
    let h = hashes(&l, &data);
    for p in 0..l.piece_count() {
        assert!(s.verify_piece(p, &h[p as usize]).unwrap(), "piece {p}");
    }
}

#[test]
fn handle_cache_stays_within_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, u64)> = (0..40).map(|i| (format!("f{i:02}"), 10 + i % 7)).collect();
    let l = Layout::new(
        files
            .iter()
            .map(|(n, len)| (vec!["t".to_string(), n.clone()], *len, false)),
        16,
    )
    .unwrap();
    let data = Arc::new(content(&l, 60));
    let s = Arc::new(
        Storage::new(
            dir.path(),
            l.clone(),
            StorageConfig {
                max_open_files: 3,
                ..StorageConfig::default()
            },
        )
        .unwrap(),
    );
    let pool = WorkerPool::new(2).unwrap();
    let handles: Vec<_> = shuffled_pieces(&l, 61)
        .into_iter()
        .map(|p| {
            let (s, data) = (Arc::clone(&s), Arc::clone(&data));
            pool.submit(move || {
                let mut g = Gen::new(u64::from(p));
                let b = blocks(s.layout(), &data, p, &mut g, 5);
                let w = s.write_piece(p, &b).unwrap();
                assert!(s.open_files() <= 3);
                let back = s.read_piece(p).unwrap();
                assert!(s.open_files() <= 3);
                (w, back.len())
            })
        })
        .collect();
    for h in handles {
        let (w, _) = h.wait().unwrap();
        assert_eq!(w, PieceWrite::Stored);
    }
    assert!(s.peak_open_files() <= 3, "peak {}", s.peak_open_files());
    assert_eq!(s.max_open_files(), 3);
    assert_files_exact(&s, &data);
    // Dirty files whose handles were closed are still synced.
    s.flush().unwrap();
    s.close_files();
    assert_eq!(s.open_files(), 0);
}

#[test]
fn check_finds_exactly_the_good_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(
        &[("a", 200, false), ("b", 150, false), ("c", 90, false)],
        32,
    );
    let data = content(&l, 70);
    let h = hashes(&l, &data);
    let s = storage(dir.path(), &l);
    write_pieces(&s, &data, &shuffled_pieces(&l, 71), 72);
    // Corrupt one byte: offset 10 of b = byte 210 of the content, in piece 6.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("t/b"))
        .unwrap();
    f.write_all_at(&[data[210] ^ 0x01], 10).unwrap();
    drop(f);
    let calls = std::sync::atomic::AtomicU32::new(0);
    let have = check_pieces(
        &s,
        |i| h.get(i as usize).copied(),
        2,
        |done, total| {
            assert!(done <= total);
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        },
    )
    .unwrap();
    assert_eq!(calls.into_inner(), l.piece_count());
    let good: Vec<u32> = have.iter_ones().collect();
    let expected: Vec<u32> = (0..l.piece_count()).filter(|&p| p != 6).collect();
    assert_eq!(good, expected);
}

#[test]
fn check_treats_missing_files_as_absent_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(&[("a", 64, false), ("b", 64, false), ("c", 64, false)], 32);
    let data = content(&l, 80);
    let h = hashes(&l, &data);
    {
        let s = storage(dir.path(), &l);
        write_pieces(&s, &data, &shuffled_pieces(&l, 81), 82);
    }
    fs::remove_file(dir.path().join("t/b")).unwrap();
    // A fresh storage over existing files (as after a restart).
    let s = storage(dir.path(), &l);
    let have = check_pieces(&s, |i| h.get(i as usize).copied(), 1, |_, _| {}).unwrap();
    assert_eq!(have.iter_ones().collect::<Vec<_>>(), vec![0, 1, 4, 5]);
    assert!(!dir.path().join("t/b").exists());
    // Nothing at all on disk: nothing found, nothing created.
    let empty = tempfile::tempdir().unwrap();
    let root = empty.path().join("not-yet");
    let s = storage(&root, &l);
    let have = check_pieces(&s, |i| h.get(i as usize).copied(), 2, |_, _| {}).unwrap();
    assert!(have.none());
    assert!(!root.exists());
}

#[test]
fn bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(&[("a", 100, false)], 32);
    let s = storage(dir.path(), &l);
    let kind = |r: Result<Bytes, hyperblow_storage::StorageError>| r.unwrap_err().kind;
    assert_eq!(
        kind(s.read_block(4, 0, 1)),
        StorageErrorKind::InvalidRequest
    );
    assert_eq!(
        kind(s.read_block(3, 0, 5)),
        StorageErrorKind::InvalidRequest
    );
    let e = s
        .write_piece(0, &[Bytes::from_static(b"short")])
        .unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::InvalidRequest);
    assert!(e.to_string().contains("32 bytes but 5"), "{e}");
    assert_eq!(
        s.write_piece(9, &[]).unwrap_err().kind,
        StorageErrorKind::InvalidRequest
    );
    assert_eq!(
        s.verify_piece(9, &[0; 20]).unwrap_err().kind,
        StorageErrorKind::InvalidRequest
    );
    // Nothing was created by any of that.
    assert!(!dir.path().join("t").exists());
}

#[test]
fn paths_that_leave_the_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["..", ".", "", "a/b", "/etc"] {
        let l = Layout::new(
            vec![(vec!["t".to_string(), bad.to_string()], 10, false)],
            16,
        )
        .unwrap();
        let e = Storage::new(dir.path(), l, StorageConfig::default()).unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::UnsafePath, "{bad:?}");
    }
    // A directory inside the root that is a symbolic link to somewhere else.
    let outside = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("t")).unwrap();
    let l = layout(&[("x", 16, false)], 16);
    let s = storage(&root, &l);
    let data = content(&l, 90);
    let e = s
        .write_piece(0, &[Bytes::copy_from_slice(&data)])
        .unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::UnsafePath);
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
}

#[test]
fn a_vanished_file_reads_as_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(&[("a", 64, false)], 32);
    let data = content(&l, 100);
    let s = storage(dir.path(), &l);
    write_pieces(&s, &data, &[0, 1], 101);
    s.close_files();
    fs::remove_file(dir.path().join("t/a")).unwrap();
    let e = s.read_block(0, 0, 16).unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::NotFound);
    assert!(e.to_string().contains("t/a"), "{e}");
    // A file cut short reads as not found too.
    write_pieces(&s, &data, &[0], 102);
    s.close_files();
    fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("t/a"))
        .unwrap()
        .set_len(40)
        .unwrap();
    let e = s.read_block(1, 0, 32).unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::NotFound);
    assert!(e.to_string().contains("shorter"), "{e}");
}

/// A piece of hundreds of small blocks (several vectored writes per file, blocks straddling files,
/// empty blocks in between) lands byte-exact.
#[test]
fn pieces_of_many_blocks_are_written_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(
        &[
            ("a", 5_000, false),
            ("b", 3_001, false),
            ("c", 9_999, false),
        ],
        6_000,
    );
    let data = content(&l, 11);
    let s = storage(dir.path(), &l);
    let mut g = Gen::new(12);
    for p in 0..l.piece_count() {
        let mut b = blocks(&l, &data, p, &mut g, 9);
        // Empty blocks must not confuse the writer.
        b.insert(b.len() / 2, Bytes::new());
        b.push(Bytes::new());
        assert!(b.len() > 2 * 64, "piece {p} has only {} blocks", b.len());
        assert_eq!(s.write_piece(p, &b).unwrap(), PieceWrite::Stored);
    }
    assert_files_exact(&s, &data);
}

/// Storage over three files whose pieces are long enough for direct (`O_DIRECT`) writes, with file
/// boundaries at unaligned offsets and a tail that is not a multiple of 4 KiB; direct writes on or
/// off. Returns the directory guard, the layout, the content and the storage.
fn large_piece_storage(direct: bool, seed: u64) -> (tempfile::TempDir, Layout, Vec<u8>, Storage) {
    let piece = hyperblow_storage::DIRECT_MIN_PIECE * 2;
    let dir = tempfile::tempdir().unwrap();
    let l = layout(
        &[
            ("a", u64::from(piece) * 3, false),
            ("b", u64::from(piece) + 4_097, false),
            ("c", u64::from(piece) * 2 + 123, false),
        ],
        piece,
    );
    let data = content(&l, seed);
    let config = StorageConfig {
        direct_writes: direct,
        ..StorageConfig::default()
    };
    let s = Storage::new(dir.path(), l.clone(), config).unwrap();
    (dir, l, data, s)
}

/// Pieces long enough for direct (`O_DIRECT`) writes land byte-exact: aligned file starts, a file
/// boundary inside a piece at an unaligned offset (that file's part and the next file's part go through
/// the page cache), a file tail that is not a multiple of 4 KiB, blocks of odd sizes, a piece rewritten
/// after other pieces, reads mixed in; the same with direct writes switched off.
#[test]
fn direct_writes_of_large_pieces_are_exact() {
    for direct in [true, false] {
        let (_dir, l, data, s) = large_piece_storage(direct, 21);
        let mut g = Gen::new(22);
        let mut order = shuffled_pieces(&l, 23);
        order.push(order[0]);
        for &p in &order {
            let b = blocks(&l, &data, p, &mut g, 40_000);
            assert_eq!(s.write_piece(p, &b).unwrap(), PieceWrite::Stored);
            let at = l.piece_offset(p) as usize;
            assert_eq!(
                &s.read_piece(p).unwrap()[..],
                &data[at..at + l.piece_len(p).unwrap() as usize],
                "piece {p}, direct {direct}"
            );
        }
        s.flush().unwrap();
        assert_files_exact(&s, &data);
        assert_blocks_match(&s, &data, &mut Gen::new(24), 100);
    }
}

/// `verify_and_write` (hash and stage in one pass, then a direct write from the staging buffer) lands
/// the same bytes as `write_piece` on the layout above, writes nothing on a mismatch or when `admit`
/// refuses, and holds the guard during the write; the same with direct writes off (not staged).
#[test]
fn verified_staged_writes_are_exact_and_only_after_a_match() {
    for direct in [true, false] {
        let (dir, l, data, s) = large_piece_storage(direct, 31);
        assert_eq!(s.stages(0), direct);
        let mut g = Gen::new(32);
        let hash = |p: u32| {
            let at = l.piece_offset(p) as usize;
            hyperblow_storage::hash_piece(&[&data[at..at + l.piece_len(p).unwrap() as usize]])
        };
        // A piece whose bytes do not match is never written, nor one whose admission is refused.
        let mut bad = blocks(&l, &data, 0, &mut g, 40_000);
        let mut first = bad[0].to_vec();
        first[0] ^= 1;
        bad[0] = Bytes::from(first);
        let v = s.verify_and_write(0, &bad, &hash(0), || -> Option<()> {
            panic!("admitted a mismatch")
        });
        assert_eq!(v.unwrap(), hyperblow_storage::Verify::Mismatch);
        let good = blocks(&l, &data, 0, &mut g, 40_000);
        let v = s.verify_and_write(0, &good, &hash(0), || None::<()>);
        assert_eq!(v.unwrap(), hyperblow_storage::Verify::Refused);
        assert!(!dir.path().join("a").exists());
        let held = std::sync::atomic::AtomicBool::new(false);
        for p in shuffled_pieces(&l, 33) {
            let b = blocks(&l, &data, p, &mut g, 40_000);
            held.store(false, std::sync::atomic::Ordering::Relaxed);
            let v = s.verify_and_write(p, &b, &hash(p), || {
                held.store(true, std::sync::atomic::Ordering::Relaxed);
                Some(())
            });
            assert_eq!(
                v.unwrap(),
                hyperblow_storage::Verify::Written(PieceWrite::Stored)
            );
            assert!(held.load(std::sync::atomic::Ordering::Relaxed));
        }
        s.flush().unwrap();
        assert_files_exact(&s, &data);
    }
}

/// Runs of adjacent small pieces written in one go (`write_pieces`): byte-exact across file
/// boundaries and padding, with and without direct writes (a run of 256 KiB or more goes through
/// `O_DIRECT`), a run holding a piece of no wanted file falls back to piece by piece (that piece is
/// not written), and every written piece is durable after a flush.
#[test]
fn runs_of_adjacent_pieces_are_written_exactly() {
    for direct in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        // 16 KiB pieces: a and the padding are pieces 0..=9, b (skipped) alone holds 10..=41,
        // piece 42 straddles b and c, the last piece (60) is short.
        let l = layout(
            &[
                ("a", 150_000, false),
                ("pad", 13_840, true),
                ("b", 529_288, false),
                ("c", 300_001, false),
            ],
            16384,
        );
        assert_eq!(l.piece_count(), 61);
        let data = content(&l, 40);
        let config = StorageConfig {
            direct_writes: direct,
            ..StorageConfig::default()
        };
        let s = Storage::new(dir.path(), l.clone(), config).unwrap();
        s.set_wanted(&[true, false, false, true]);
        let mut g = Gen::new(41);
        let all: Vec<Vec<Bytes>> = (0..l.piece_count())
            .map(|p| blocks(&l, &data, p, &mut g, 5000))
            .collect();
        let run = |first: u32, last: u32| {
            let pieces: Vec<&[Bytes]> = (first..=last).map(|p| &all[p as usize][..]).collect();
            s.write_pieces(first, &pieces).unwrap();
        };
        run(0, 9);
        run(9, 12);
        run(42, 57);
        run(58, 60);
        let a = fs::read(dir.path().join("t/a")).unwrap();
        assert_eq!(a, &data[..150_000]);
        assert!(!dir.path().join("t/pad").exists());
        let c = fs::read(dir.path().join("t/c")).unwrap();
        assert_eq!(c, &data[693_128..]);
        // b holds only what piece 42 straddles.
        let b = fs::read(dir.path().join("t/b")).unwrap();
        assert_eq!(&b[524_288..], &data[688_128..693_128]);
        assert!(
            b[..524_288].iter().all(|&x| x == 0),
            "pieces of b alone are not written"
        );
        s.flush().unwrap();
        let durable = s.durable_pieces();
        let want: Vec<u32> = (0..l.piece_count())
            .filter(|&p| p <= 9 || p >= 42)
            .collect();
        assert_eq!(
            (0..l.piece_count())
                .filter(|&p| durable.get(p))
                .collect::<Vec<_>>(),
            want,
            "direct {direct}"
        );
    }
}

//! A full disk: a small tmpfs mounted for the test (needs root; skipped with a message otherwise).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use hyperblow_storage::{PieceWrite, StorageErrorKind, StorageOp};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Unmounts the tmpfs when the test ends, whatever happens.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Mount(at.to_path_buf()))
    }

    fn resize(&self, size: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_gives_no_space_and_keeps_verified_pieces() {
    if !is_root() {
        println!("skipped: a_full_disk_gives_no_space_and_keeps_verified_pieces needs root to mount a tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(dir.path(), "256k") else {
        println!(
            "skipped: a_full_disk_gives_no_space_and_keeps_verified_pieces could not mount a tmpfs"
        );
        return;
    };
    let l = layout(&[("big", 1 << 20, false), ("after", 1000, false)], 1 << 16);
    let data = content(&l, 7);
    let h = hashes(&l, &data);
    let s = storage(dir.path(), &l);
    let mut g = Gen::new(8);
    let mut written = Vec::new();
    let mut failure = None;
    for p in 0..l.piece_count() {
        let b = blocks(&l, &data, p, &mut g, 16 * 1024);
        match s.write_piece(p, &b) {
            Ok(PieceWrite::Stored) => written.push(p),
            Ok(PieceWrite::NotWanted) => panic!("piece {p} not wanted"),
            Err(e) => {
                failure = Some((p, e));
                break;
            }
        }
    }
    let (failed, e) = failure.expect("a 256 KiB tmpfs cannot hold 1 MiB");
    println!("piece {failed} after {} stored: {e}", written.len());
    assert_eq!(e.kind, StorageErrorKind::NoSpace, "{e}");
    assert!(e.is_no_space());
    assert_eq!(e.op, StorageOp::Write);
    assert!(e.path.ends_with("t/big"), "{}", e.path.display());
    assert!(e.to_string().contains("t/big"), "{e}");
    assert!(
        !written.is_empty(),
        "some pieces fit before the disk filled"
    );
    // Everything written before is intact and readable.
    for &p in &written {
        assert!(s.verify_piece(p, &h[p as usize]).unwrap(), "piece {p}");
        let got = s.read_block(p, 100, 5000).unwrap();
        let at = l.piece_offset(p) as usize + 100;
        assert_eq!(&got[..], &data[at..at + 5000]);
    }
    assert!(!s.verify_piece(failed, &h[failed as usize]).unwrap());
    // After space is freed (here: the file system grown), the same storage retries and completes.
    assert!(mount.resize("4m"), "remount with more space");
    for p in failed..l.piece_count() {
        let b = blocks(&l, &data, p, &mut g, 16 * 1024);
        assert_eq!(s.write_piece(p, &b).unwrap(), PieceWrite::Stored);
    }
    for p in 0..l.piece_count() {
        assert!(s.verify_piece(p, &h[p as usize]).unwrap(), "piece {p}");
    }
    s.flush().unwrap();
    s.close_files();
    drop(s);
    drop(mount);
}

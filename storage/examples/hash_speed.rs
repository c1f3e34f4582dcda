//! Measures `hash_piece` throughput and the write + verify path on a temporary directory.
//!
//! Run: `cargo run -p hyperblow-storage --release --example hash_speed`

use std::time::Instant;

use bytes::Bytes;
use hyperblow_core::metainfo::Layout;
use hyperblow_storage::{hash_piece, PieceWrite, Storage, StorageConfig, WorkerPool};

const PIECE: usize = 1 << 20;
const BLOCK: usize = 16 * 1024;

fn main() {
    // One 1 MiB piece as 64 blocks of 16 KiB with varied content.
    let blocks: Vec<Bytes> = (0..PIECE / BLOCK)
        .map(|i| {
            Bytes::from(
                (0..BLOCK)
                    .map(|j| (i * 31 + j * 7) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    let rounds = 512; // 512 MiB
    let start = Instant::now();
    let mut acc = 0u8;
    for _ in 0..rounds {
        acc ^= hash_piece(&blocks)[0];
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "hash_piece, one thread: {:.0} MB/s ({} MiB in {:.3} s, checksum byte {acc})",
        (rounds * PIECE) as f64 / secs / 1e6,
        rounds,
        secs
    );

    let threads = hyperblow_storage::default_threads();
    let pool = WorkerPool::new(threads).expect("worker threads");
    let shared = std::sync::Arc::new(blocks.clone());
    let start = Instant::now();
    let handles: Vec<_> = (0..rounds)
        .map(|_| {
            let b = std::sync::Arc::clone(&shared);
            pool.submit(move || hash_piece(&b))
        })
        .collect();
    for h in handles {
        acc ^= h.wait().expect("job")[0];
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "hash_piece on a {threads}-thread WorkerPool: {:.0} MB/s (checksum byte {acc})",
        (rounds * PIECE) as f64 / secs / 1e6
    );

    // Write 256 MiB of pieces to a temporary directory, then read and verify them.
    let dir = tempfile::tempdir().expect("temp dir");
    let pieces = 256u32;
    let layout = Layout::new(
        vec![(
            vec!["bench.bin".to_string()],
            u64::from(pieces) * PIECE as u64,
            false,
        )],
        PIECE as u32,
    )
    .expect("layout");
    let storage = Storage::new(dir.path(), layout, StorageConfig::default()).expect("storage");
    let expected = hash_piece(&blocks);
    let start = Instant::now();
    for p in 0..pieces {
        assert_eq!(
            storage.write_piece(p, &blocks).expect("write"),
            PieceWrite::Stored
        );
    }
    let write_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for p in 0..pieces {
        assert!(storage.verify_piece(p, &expected).expect("verify"));
    }
    let verify_secs = start.elapsed().as_secs_f64();
    let mb = f64::from(pieces) * PIECE as f64 / 1e6;
    println!(
        "write_piece (page cache, {} MiB): {:.0} MB/s; verify_piece (read + SHA-1): {:.0} MB/s",
        pieces,
        mb / write_secs,
        mb / verify_secs
    );
}

//! Decoding a large `.torrent`: bencode alone, and full metainfo parsing + validation.
//!
//! The torrent has 10,000 files in nested directories and is made by the core's own builder, so the
//! bytes are exactly what `hyperblow create` would write.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hyperblow_core::bencode;
use hyperblow_core::metainfo::{Metainfo, TorrentBuilder};

const FILES: usize = 10_000;

fn ten_thousand_file_torrent() -> Vec<u8> {
    let files: Vec<(Vec<String>, u64)> = (0..FILES)
        .map(|i| {
            let path = vec![
                format!("season-{:02}", i / 1000),
                format!("disc-{}", (i / 100) % 10),
                format!("track-{i:05}.flac"),
            ];
            // Sizes between 1 and ~8 KiB, so hashing the content in setup stays cheap.
            (path, 1 + (i as u64 * 7919) % 8192)
        })
        .collect();
    let mut hasher = TorrentBuilder::multi_file("bench-collection", files)
        .piece_length(16 * 1024)
        .trackers(vec![
            vec!["udp://tracker.example:6969/announce".to_string()],
            vec!["http://backup.example/announce".to_string()],
        ])
        .creation_date(1_700_000_000)
        .start()
        .expect("valid builder input");
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = hasher.layout().total_length();
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        hasher.update(&chunk[..n]).expect("declared length");
        left -= n as u64;
    }
    hasher.finish().expect("all content fed").bytes
}

fn bench(c: &mut Criterion) {
    let torrent = ten_thousand_file_torrent();
    let mut group = c.benchmark_group("torrent_10k_files");
    group.throughput(Throughput::Bytes(torrent.len() as u64));
    group.bench_function("bencode_decode", |b| {
        b.iter(|| bencode::decode(black_box(&torrent)).expect("valid bencode"))
    });
    group.bench_function("metainfo_parse", |b| {
        b.iter(|| Metainfo::from_bytes(black_box(&torrent)).expect("valid torrent"))
    });
    group.finish();
    println!(
        "torrent size: {} bytes, {} files",
        torrent.len(),
        Metainfo::from_bytes(&torrent)
            .map(|m| m.info.layout().files().len())
            .unwrap_or(0)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

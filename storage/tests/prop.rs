//! Property test: any layout, any block chunking, any write order gives byte-exact files and reads.

mod common;

use bytes::Bytes;
use common::*;
use hyperblow_core::metainfo::Layout;
use hyperblow_storage::{PieceWrite, Storage, StorageConfig};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_layout_round_trips(
        files in proptest::collection::vec((0u64..90, any::<bool>()), 1..7),
        piece_length in 1u32..70,
        block_max in 1u64..40,
        max_open in 1usize..4,
        seed in any::<u64>(),
    ) {
        prop_assume!(files.iter().map(|f| f.0).sum::<u64>() > 0);
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(
            files.iter().enumerate().map(|(i, (len, pad))| {
                (vec!["t".to_string(), format!("f{i}")], *len, *pad && *len > 0)
            }),
            piece_length,
        )
        .unwrap();
        let data = content(&l, seed);
        let s = Storage::new(dir.path(), l.clone(), StorageConfig { max_open_files: max_open, ..StorageConfig::default() }).unwrap();
        let mut g = Gen::new(seed ^ 1);
        for p in shuffled_pieces(&l, seed ^ 2) {
            let b: Vec<Bytes> = blocks(&l, &data, p, &mut g, block_max);
            prop_assert_eq!(s.write_piece(p, &b).unwrap(), PieceWrite::Stored);
        }
        prop_assert!(s.peak_open_files() <= max_open);
        for (i, f) in l.files().iter().enumerate() {
            let path = s.file_path(i).unwrap();
            if f.padding {
                prop_assert!(!path.exists());
            } else {
                let on_disk = std::fs::read(path).unwrap();
                prop_assert_eq!(&on_disk[..], &data[f.offset as usize..(f.offset + f.length) as usize]);
            }
        }
        for _ in 0..20 {
            let p = g.below(u64::from(l.piece_count())) as u32;
            let plen = l.piece_len(p).unwrap();
            let begin = g.below(u64::from(plen)) as u32;
            let len = 1 + g.below(u64::from(plen - begin)) as u32;
            let got = s.read_block(p, begin, len).unwrap();
            let at = (l.piece_offset(p) + u64::from(begin)) as usize;
            prop_assert_eq!(&got[..], &data[at..at + len as usize]);
        }
        let h = hashes(&l, &data);
        let have = hyperblow_storage::check_pieces(&s, |i| h.get(i as usize).copied(), 2, |_, _| {}).unwrap();
        prop_assert!(have.all());
    }
}

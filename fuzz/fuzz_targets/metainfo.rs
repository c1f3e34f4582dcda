//! `.torrent` files and info dictionaries: arbitrary bytes never panic; an accepted torrent written
//! back out parses again with the same info-hash.
#![no_main]

use hyperblow_core::metainfo::{Info, Metainfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::from_bytes(data) {
        let again = Metainfo::from_bytes(&m.to_bytes()).expect("a written torrent parses");
        assert_eq!(again.info_hash(), m.info_hash());
        let layout = m.info.layout();
        let _ = format!("{layout:?}");
    }
    if let Ok(info) = Info::from_bytes(data) {
        let h = info.info_hash();
        assert!(Info::from_metadata(data, h).is_ok());
        let _ = info.piece_hash(u32::MAX);
    }
});

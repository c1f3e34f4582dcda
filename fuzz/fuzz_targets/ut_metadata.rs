//! `ut_metadata` (BEP 9): arbitrary payloads never panic the codec; a decoded message re-encodes to
//! itself; and the metadata fetcher, fed a stream of arbitrary messages from two peers, never panics
//! and never accepts metadata that does not hash to the info-hash.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use hyperblow_core::ext::metadata::{FetcherConfig, MetadataFetcher, MetadataMessage};
use hyperblow_core::time::Instant;
use hyperblow_core::InfoHash;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = MetadataMessage::decode(&Bytes::copy_from_slice(data)) {
        let again = MetadataMessage::decode(&Bytes::from(m.encode())).expect("re-encoded decodes");
        assert_eq!(again, m);
    }
    // Messages are separated by the byte sequence `!!`; the first two bytes pick the announced size.
    if data.len() < 2 {
        return;
    }
    let size = u64::from(u16::from_le_bytes([data[0], data[1]])) * 7 + 1;
    let ih = InfoHash([9; 20]);
    let mut fetcher: MetadataFetcher<u8> = MetadataFetcher::new(ih, FetcherConfig::default());
    let _ = fetcher.add_peer(1, Some(size), true);
    let _ = fetcher.add_peer(2, Some(size), true);
    let mut now = Instant::from_secs(1);
    let body = &data[2..];

    let mut i = 0u32;
    for part in body.split(|&b| b == b'!').filter(|p| !p.is_empty()) {
        i += 1;
        while fetcher.poll_request(now).is_some() {}
        let key = if part[0] & 1 == 0 { 1 } else { 2 };
        match MetadataMessage::decode(&Bytes::copy_from_slice(&part[1..])) {
            Ok(MetadataMessage::Data {
                piece,
                total_size,
                data,
            }) => {
                let _ = fetcher.handle_data(key, piece, total_size, data);
            }
            Ok(MetadataMessage::Reject { piece }) => {
                let _ = fetcher.handle_reject(key, piece, now);
            }
            Ok(MetadataMessage::Request { .. }) => {}
            Err(_) => {
                fetcher.remove_peer(key);
                let _ = fetcher.add_peer(key, Some(size), true);
            }
        }
        if i % 3 == 0 {
            now = now.saturating_add(Duration::from_secs(10));
            fetcher.handle_timeout(now);
        }
        if let Some(info) = fetcher.result() {
            assert_eq!(info.info_hash(), ih);
        }
    }
});

//! UDP tracker replies (BEP 15): the codec never panics on any datagram, and the router, with an
//! announce outstanding, survives any datagram sequence (the fuzzer's bytes get the transaction id of
//! the request in flight patched in, so it can reach past the id check).
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use hyperblow_core::rng;
use hyperblow_core::time::Instant;
use hyperblow_core::tracker::udp::{AddressFamily, Response};
use hyperblow_core::tracker::udp_client::{UdpConfig, UdpTrackerRouter};
use hyperblow_core::tracker::{AnnounceEvent, AnnounceParams};
use hyperblow_core::{InfoHash, PeerId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for family in [AddressFamily::V4, AddressFamily::V6] {
        if let Ok(r) = Response::decode(data, family) {
            let bytes = r.to_bytes(family);
            let _ = Response::decode(&bytes, family);
        }
    }
    let _ = Response::peek_header(data);

    let tracker: SocketAddr = if data.first().is_some_and(|b| b & 1 == 1) {
        "[::1]:6969".parse().unwrap()
    } else {
        "127.0.0.1:6969".parse().unwrap()
    };
    let mut router = UdpTrackerRouter::new(UdpConfig::default(), rng::seeded(7));
    let mut now = Instant::from_secs(1);
    let params = AnnounceParams {
        info_hash: InfoHash([1; 20]),
        peer_id: PeerId([2; 20]),
        port: 6881,
        uploaded: 0,
        downloaded: 0,
        left: 100,
        event: AnnounceEvent::Started,
        num_want: Some(50),
        key: 3,
    };
    let _ = router.announce(now, tracker, params.clone());
    // Datagrams are separated by the byte 0xfe (the rest goes as is).
    for (i, datagram) in data.split(|&b| b == 0xfe).enumerate() {
        let mut last_tx = None;
        while let Some((_, bytes)) = router.poll_transmit() {
            if bytes.len() >= 16 {
                last_tx = Some([bytes[12], bytes[13], bytes[14], bytes[15]]);
            }
        }
        let mut d = datagram.to_vec();
        if let (Some(tx), true) = (last_tx, d.len() >= 8) {
            d[4..8].copy_from_slice(&tx);
        }
        router.handle_datagram(now, tracker, &d);
        while router.poll_event().is_some() {}
        if i % 4 == 3 {
            now = now.saturating_add(Duration::from_secs(20));
            router.handle_timeout(now);
        }
        if router.poll_event().is_none() && router.poll_timeout().is_none() {
            let _ = router.announce(now, tracker, params.clone());
        }
    }
});

//! KRPC (the DHT's messages, BEP 5): the codec never panics on any datagram and what it decodes
//! re-encodes to a message that decodes the same; a DHT node with a lookup in flight survives any
//! datagram sequence from a few addresses (one of them the node it asked) within its caps.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use hyperblow_core::dht::krpc;
use hyperblow_core::dht::{Dht, DhtConfig};
use hyperblow_core::rng;
use hyperblow_core::time::Instant;
use hyperblow_core::InfoHash;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = krpc::decode(data) {
        let bytes = m.encode();
        let again = krpc::decode(&bytes).expect("an encoded message decodes");
        assert_eq!(again, m, "re-encoding changed the message");
    }

    let boot: SocketAddr = "127.0.0.1:6881".parse().unwrap();
    let others: [SocketAddr; 3] = [
        boot,
        "10.0.0.9:4000".parse().unwrap(),
        "[::1]:6881".parse().unwrap(),
    ];
    let config = DhtConfig::default();
    let mut now = Instant::from_secs(1);
    let mut dht = Dht::new(config.clone(), now, rng::seeded(9));
    dht.bootstrap(now, &[boot]);
    let _ = dht.get_peers(now, InfoHash([5; 20]));
    // Datagrams are separated by the byte 0xfe; the byte after a separator picks the sender.
    for (i, datagram) in data.split(|&b| b == 0xfe).enumerate() {
        let from = others[datagram.first().map_or(0, |b| usize::from(*b) % others.len())];
        dht.handle_datagram(now, from, datagram);
        while dht.poll_transmit().is_some() {}
        while dht.poll_event().is_some() {}
        if i % 4 == 3 {
            now = now.saturating_add(Duration::from_secs(3));
            dht.handle_timeout(now);
        }
        let s = dht.stats(now);
        assert!(s.outstanding <= config.max_outstanding);
        assert!(s.lookups <= config.max_lookups);
        assert!(s.stored_peers <= config.store.max_peers_total);
        assert!(s.rate_limiter_entries <= config.rate_limiter_entries);
    }
});

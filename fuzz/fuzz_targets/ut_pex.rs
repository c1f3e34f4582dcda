//! `ut_pex` (BEP 11): arbitrary payloads never panic the codec or the receiver's filter; a decoded
//! message re-encodes to one that decodes to itself; the receiver never passes on more entries than
//! its per-message cap, nor an implausible address.
#![no_main]

use std::time::Duration;

use hyperblow_core::ext::pex::{
    is_plausible_peer_addr, PexMessage, PexReceiver, PexReceiverConfig,
};
use hyperblow_core::time::Instant;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = PexMessage::decode(data) {
        let again = PexMessage::decode(&m.encode()).expect("re-encoded decodes");
        assert_eq!(again, m);
    }
    let config = PexReceiverConfig {
        max_per_message: 20,
        ..PexReceiverConfig::default()
    };
    let mut rx = PexReceiver::new(config, false).expect("public torrent");
    let mut now = Instant::from_secs(1);
    for part in data.split(|&b| b == b'!') {
        if let Ok(accepted) = rx.handle_payload(now, part) {
            assert!(accepted.added.len() <= config.max_per_message);
            assert!(accepted.dropped.len() <= config.max_per_message);
            for p in &accepted.added {
                assert!(is_plausible_peer_addr(&p.addr, false), "{p:?}");
            }
        }
        now = now.saturating_add(Duration::from_secs(50));
    }
});

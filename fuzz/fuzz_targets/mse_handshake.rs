//! The MSE/PE handshake (`hyperblow_core::mse`), both sides, fed arbitrary peer bytes in arbitrary
//! chunks: never panics, consumes no more than it is given, stays within the spec's byte bounds while
//! unfinished (a peer cannot make it wait for or buffer more), and its errors are sticky.
#![no_main]

use hyperblow_core::mse::{
    detect, Handshake, NoSkeys, Policy, MAX_PAD_LEN, REQ1_SYNC_BOUND, VC_SYNC_BOUND,
};
use hyperblow_core::rng::seeded;
use hyperblow_core::{InfoHash, Instant};
use libfuzzer_sys::fuzz_target;

/// Most bytes an accepting handshake reads: key + PadA + req1, then hash, VC, provide, len, PadC, len(IA).
const B_MAX: usize = REQ1_SYNC_BOUND + 20 + 8 + 4 + 2 + MAX_PAD_LEN + 2;
/// Most bytes a dialling handshake reads: key + PadB + VC, then select, len, PadD.
const A_MAX: usize = VC_SYNC_BOUND + 4 + 2 + MAX_PAD_LEN;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let _ = detect(rest);
    let chunk = usize::from(ctl & 0x3f) + 1;
    let policy = if ctl & 0x40 == 0 {
        Policy::Prefer
    } else {
        Policy::Require
    };
    let outgoing = ctl & 0x80 != 0;
    let ih = InfoHash([0x5a; 20]);
    let skeys = [ih];
    let now = Instant::from_secs(1);
    let mut rng = seeded(u64::from(ctl));
    let mut hs = if outgoing {
        Handshake::outgoing(now, &mut rng, ih, policy, &[0x13; 68]).expect("policy allows MSE")
    } else {
        Handshake::incoming(now, &mut rng, policy).expect("policy allows MSE")
    };
    let max = if outgoing { A_MAX } else { B_MAX };
    let mut fed = 0usize;
    for piece in rest.chunks(chunk) {
        fed += piece.len();
        match hs.handle_read(piece, &skeys[..]) {
            Ok(n) => {
                assert!(n <= piece.len());
                while hs.poll_transmit().is_some() {}
                if hs.take_established().is_some() || hs.is_established() {
                    return;
                }
                assert!(hs.received() <= max, "{} bytes read unfinished", hs.received());
                assert!(hs.received() <= fed);
            }
            Err(e) => {
                // Sticky.
                assert_eq!(hs.handle_read(b"more", &NoSkeys), Err(e.clone()));
                assert_eq!(hs.handle_eof(), e);
                return;
            }
        }
    }
    let _ = hs.handle_timeout(now);
});

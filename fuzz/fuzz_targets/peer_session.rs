//! The peer session fed an arbitrary byte stream: it never panics, its buffers stay bounded, and it
//! only ever closes with an error (never misbehaves) whatever the peer sends, while we also act on it
//! (accepting, requesting, serving, choking) and time moves on.
//!
//! Input: one control byte (direction, our extension bits, which pieces we have), then a script of
//! operations: `0x00..=0xbf` feeds the next `op % 64 + 1` bytes, `0xc0..` does one local action or
//! advances the virtual clock.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use hyperblow_core::bitfield::Bitfield;
use hyperblow_core::peer::{BlockRequest, Event, Geometry, PeerSession, SessionConfig};
use hyperblow_core::time::Instant;
use hyperblow_core::wire::Reserved;
use hyperblow_core::{InfoHash, PeerId};
use libfuzzer_sys::fuzz_target;

const IH: InfoHash = InfoHash([7; 20]);
const ME: PeerId = PeerId(*b"-HB0100-fuzzfuzzfuzz");
const PL: u32 = 32 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, mut rest)) = data.split_first() else {
        return;
    };
    // 10 pieces of 32 KiB, the last 1000 bytes.
    let geometry = Geometry::new(PL, u64::from(PL) * 9 + 1000).expect("valid geometry");
    let mut reserved = Reserved::empty();
    if ctl & 2 != 0 {
        reserved |= Reserved::FAST;
    }
    if ctl & 4 != 0 {
        reserved |= Reserved::EXTENSION_PROTOCOL;
    }
    let config = SessionConfig {
        reserved,
        ..SessionConfig::default()
    };
    let have = match ctl & 0x18 {
        0 => Bitfield::new(10),
        8 => Bitfield::full(10),
        _ => {
            let mut b = Bitfield::new(10);
            for i in (0..10).step_by(2) {
                b.set(i);
            }
            b
        }
    };
    let mut now = Instant::from_secs(1);
    let mut s = if ctl & 1 == 0 {
        PeerSession::incoming(config, ME, now)
    } else if ctl & 0x20 == 0 {
        PeerSession::outgoing(config, geometry, IH, ME, &have, now).expect("valid setup")
    } else {
        PeerSession::outgoing_without_metadata(config, IH, ME, now)
    };
    let mut next_block = 0u32;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        if op < 0xc0 {
            let n = (usize::from(op) % 64 + 1).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            s.handle_read(now, chunk);
        } else {
            match op {
                0xc0..=0xcf => {
                    let b = next_block % (geometry.pieces() * 2);
                    next_block += 1;
                    let piece = b / 2;
                    let offset = (b % 2) * 16 * 1024;
                    let len = if piece == 9 {
                        if offset == 0 {
                            1000
                        } else {
                            continue;
                        }
                    } else {
                        16 * 1024
                    };
                    let _ = s.request(
                        now,
                        BlockRequest {
                            piece,
                            offset,
                            length: len,
                        },
                    );
                }
                0xd0..=0xd7 => s.set_interested(now, op & 1 == 0),
                0xd8..=0xdf => s.set_choking(now, op & 1 == 0),
                0xe0..=0xe3 => {
                    let _ = s.set_geometry(now, geometry, &have);
                }
                0xe4..=0xe7 => {
                    let _ = s.send_have(now, u32::from(op & 3) * 3);
                }
                0xe8..=0xeb => {
                    let _ = s.send_extended(now, op & 3, Bytes::from_static(b"d1:v1:xe"));
                }
                _ => {
                    now = now.saturating_add(Duration::from_secs(u64::from(op - 0xec) * 7 + 1));
                    s.handle_timeout(now);
                }
            }
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::HandshakeReceived { info_hash, .. } => {
                    if info_hash == IH {
                        let _ = s.accept(now, geometry, &have);
                    } else {
                        let _ = s.reject();
                    }
                }
                Event::ReadRequest { block } => {
                    if have.get(block.piece) && block.length <= 16 * 1024 {
                        let data = Bytes::from(vec![0u8; block.length as usize]);
                        let _ = s.send_block(now, block, data);
                    } else {
                        let _ = s.reject_request(now, block);
                    }
                }
                Event::BlockReceived { block, data } => {
                    assert_eq!(data.len(), block.length as usize);
                }
                _ => {}
            }
        }
        while s.poll_transmit().is_some() {}
        if let Some(t) = s.poll_timeout() {
            // A deadline already past is only allowed right after an input; handling it must move it.
            if t <= now {
                s.handle_timeout(now);
                assert!(s.poll_timeout().is_none_or(|t2| t2 > now || s.is_closed()));
            }
        }
        if s.is_closed() {
            break;
        }
        assert!(s.outgoing_len() <= 4 * 1024 * 1024);
    }
});

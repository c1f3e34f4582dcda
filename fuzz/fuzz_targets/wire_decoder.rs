//! The peer wire decoder: any byte stream in any chunking never panics, never buffers more than one
//! frame plus one read, and every decoded message re-encodes to a frame that decodes to itself.
#![no_main]

use bytes::BytesMut;
use hyperblow_core::wire::{Decoded, Decoder};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(ctl & 0x7f) + 1;
    let mut d = if ctl & 0x80 == 0 {
        Decoder::new(MAX_FRAME)
    } else {
        Decoder::new_after_handshake(MAX_FRAME)
    };
    for piece in rest.chunks(chunk) {
        d.extend(piece);
        loop {
            match d.decode() {
                Ok(Some(Decoded::Message(m))) => {
                    let mut buf = BytesMut::new();
                    if m.encode(&mut buf).is_ok() {
                        let mut d2 = Decoder::new_after_handshake(u32::MAX >> 1);
                        d2.extend(&buf);
                        match d2.decode() {
                            Ok(Some(Decoded::Message(m2))) => assert_eq!(m2, m),
                            other => panic!("re-encoded {m:?} decoded as {other:?}"),
                        }
                    }
                }
                Ok(Some(Decoded::Handshake(h))) => {
                    assert_eq!(h.to_bytes().len(), 68);
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(d.decode().is_err(), "errors are sticky");
                    return;
                }
            }
        }
        assert!(d.buffered() <= 4 + MAX_FRAME as usize + chunk);
    }
});

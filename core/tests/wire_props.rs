//! Property tests for the peer wire codec: round-trips, arbitrary chunking, and garbage input.

use bytes::{Bytes, BytesMut};
use hyperblow_core::types::{InfoHash, PeerId};
use hyperblow_core::wire::{
    BlockRequest, DecodeError, Decoded, Decoder, Handshake, Message, Reserved,
};
use proptest::prelude::*;

/// Frame limit used by these tests: small enough that garbage hits it often, big enough for every
/// generated message.
const MAX: u32 = 4096;

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn arb_block() -> impl Strategy<Value = BlockRequest> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(index, begin, length)| BlockRequest {
        index,
        begin,
        length,
    })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::Choke),
        Just(Message::Unchoke),
        Just(Message::Interested),
        Just(Message::NotInterested),
        Just(Message::HaveAll),
        Just(Message::HaveNone),
        any::<u32>().prop_map(|piece| Message::Have { piece }),
        any::<u32>().prop_map(|piece| Message::Suggest { piece }),
        any::<u32>().prop_map(|piece| Message::AllowedFast { piece }),
        arb_bytes(600).prop_map(Message::Bitfield),
        arb_block().prop_map(Message::Request),
        arb_block().prop_map(Message::Cancel),
        arb_block().prop_map(Message::RejectRequest),
        (any::<u32>(), any::<u32>(), arb_bytes(2048)).prop_map(|(index, begin, block)| {
            Message::Piece {
                index,
                begin,
                block,
            }
        }),
        any::<u16>().prop_map(Message::Port),
        (any::<u8>(), arb_bytes(600)).prop_map(|(id, payload)| Message::Extended { id, payload }),
    ]
}

fn arb_handshake() -> impl Strategy<Value = Handshake> {
    (any::<u64>(), any::<[u8; 20]>(), any::<[u8; 20]>()).prop_map(|(r, ih, pid)| {
        Handshake::new(InfoHash(ih), PeerId(pid), Reserved::from_bits_retain(r))
    })
}

/// Feeds `stream` cut into `chunks` (sizes cycled, each at least 1), draining after every piece and
/// checking the buffer bound; returns the decoded items or the first error. In turn the chunk goes
/// through `read_buf` (the driver's path, where a read may be shortened to the spare capacity), through
/// `extend`, and through `extend_owned` (a reader task's path).
fn feed(d: &mut Decoder, stream: &[u8], chunks: &[usize]) -> (Vec<Decoded>, Option<DecodeError>) {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let size = chunks
            .get(i % chunks.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let mut end = (pos + size).min(stream.len());
        if i % 3 == 0 {
            // Like a socket read: at most the spare capacity offered.
            let buf = d.read_buf();
            end = end.min(pos + (buf.capacity() - buf.len()).max(1));
            buf.extend_from_slice(&stream[pos..end]);
        } else if i % 3 == 1 {
            d.extend(&stream[pos..end]);
        } else {
            // A reader task's chunk, here always in an allocation of its own (never a continuation).
            d.extend_owned(BytesMut::from(&stream[pos..end]));
        }
        assert!(
            d.buffered() <= 4 + d.max_frame_len() as usize + size,
            "buffered {} > limit {} + chunk {size}",
            d.buffered(),
            4 + d.max_frame_len()
        );
        pos = end;
        i += 1;
        loop {
            match d.decode() {
                Ok(Some(item)) => out.push(item),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in arb_message()) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf).expect("encodable");
        prop_assert_eq!(buf.len(), msg.encoded_len());
        let mut d = Decoder::new_after_handshake(MAX);
        d.extend(&buf);
        prop_assert_eq!(d.decode(), Ok(Some(Decoded::Message(msg))));
        prop_assert_eq!(d.decode(), Ok(None));
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn handshake_round_trips(hs in arb_handshake()) {
        let mut buf = BytesMut::new();
        hs.encode(&mut buf);
        prop_assert_eq!(Handshake::parse(&buf), Ok(hs));
        prop_assert_eq!(&hs.reserved.to_bytes()[..], &buf[20..28]);
    }

    #[test]
    fn any_chunking_decodes_the_same_sequence(
        hs in arb_handshake(),
        msgs in prop::collection::vec(arb_message(), 0..24),
        chunks in prop::collection::vec(1usize..5000, 1..16),
    ) {
        let mut stream = BytesMut::new();
        hs.encode(&mut stream);
        for m in &msgs {
            m.encode(&mut stream).expect("encodable");
        }
        let mut d = Decoder::new(MAX).with_read_chunk(1460);
        let (items, err) = feed(&mut d, &stream, &chunks);
        prop_assert_eq!(err, None);
        let mut want = vec![Decoded::Handshake(hs)];
        want.extend(msgs.into_iter().map(Decoded::Message));
        prop_assert_eq!(items, want);
        prop_assert_eq!(d.buffered(), 0);
        prop_assert_eq!(d.stream_offset(), stream.len() as u64);
    }

    #[test]
    fn garbage_never_panics_and_stays_bounded(
        with_handshake in any::<bool>(),
        garbage in prop::collection::vec(any::<u8>(), 0..6000),
        chunks in prop::collection::vec(1usize..3000, 1..8),
    ) {
        let mut stream = Vec::new();
        if with_handshake {
            stream.extend_from_slice(&Handshake::new(InfoHash([1; 20]), PeerId([2; 20]), Reserved::empty()).to_bytes());
        }
        stream.extend_from_slice(&garbage);
        let mut d = Decoder::new(MAX);
        let (_, err) = feed(&mut d, &stream, &chunks);
        if let Some(e) = err {
            // Sticky: the same error again, even after more input.
            d.extend(&[0, 0, 0, 0]);
            prop_assert_eq!(d.decode(), Err(e));
            prop_assert_eq!(d.buffered(), 0);
        } else {
            prop_assert!(d.buffered() <= 4 + MAX as usize);
        }
    }

    #[test]
    fn framed_garbage_never_panics(
        frames in prop::collection::vec((0u32..64, any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 0..40),
        chunks in prop::collection::vec(1usize..100, 1..8),
    ) {
        // Plausible-looking frames (small lengths, any id) reach the id and length checks more often than
        // uniform garbage does.
        let mut stream = Vec::new();
        for (len, id, body) in &frames {
            stream.extend_from_slice(&len.to_be_bytes());
            stream.push(*id);
            stream.extend_from_slice(body);
        }
        let mut d = Decoder::new_after_handshake(MAX);
        let (_, err) = feed(&mut d, &stream, &chunks);
        if let Some(e) = err {
            prop_assert_eq!(d.decode(), Err(e));
        }
    }
}

//! The peer wire messages (BEP 3, BEP 5 `port`, BEP 6 fast extension, BEP 10 extended) and their encoder.
//!
//! Every message after the handshake is a frame: a 4-byte big-endian length, then (unless the length is 0,
//! a keep-alive) a 1-byte id and an id-specific body. Integers are 4-byte big-endian, except the 2-byte
//! `port`.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use nom::number::complete::{be_u16, be_u32};
use nom::sequence::tuple;

use super::EncodeError;

/// The one-byte message ids (BEP 4 keeps the registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageId {
    /// BEP 3: the sender will not serve requests.
    Choke = 0,
    /// BEP 3: the sender will serve requests.
    Unchoke = 1,
    /// BEP 3: the sender wants pieces the receiver has.
    Interested = 2,
    /// BEP 3: the sender wants nothing from the receiver.
    NotInterested = 3,
    /// BEP 3: the sender completed a piece.
    Have = 4,
    /// BEP 3: the sender's pieces, only as the first message.
    Bitfield = 5,
    /// BEP 3: asks for a block.
    Request = 6,
    /// BEP 3: carries a block.
    Piece = 7,
    /// BEP 3: withdraws a request.
    Cancel = 8,
    /// BEP 5: the sender's DHT port.
    Port = 9,
    /// BEP 6: a piece the receiver might like to download.
    Suggest = 0x0D,
    /// BEP 6: the sender is a seed (replaces the bitfield).
    HaveAll = 0x0E,
    /// BEP 6: the sender has nothing (replaces the bitfield).
    HaveNone = 0x0F,
    /// BEP 6: a request the sender will not serve.
    RejectRequest = 0x10,
    /// BEP 6: a piece the receiver may request even while choked.
    AllowedFast = 0x11,
    /// BEP 10: an extension protocol message.
    Extended = 20,
}

impl MessageId {
    /// Maps a wire byte to its id, `None` for ids this client does not know.
    pub fn from_u8(b: u8) -> Option<MessageId> {
        Some(match b {
            0 => MessageId::Choke,
            1 => MessageId::Unchoke,
            2 => MessageId::Interested,
            3 => MessageId::NotInterested,
            4 => MessageId::Have,
            5 => MessageId::Bitfield,
            6 => MessageId::Request,
            7 => MessageId::Piece,
            8 => MessageId::Cancel,
            9 => MessageId::Port,
            0x0D => MessageId::Suggest,
            0x0E => MessageId::HaveAll,
            0x0F => MessageId::HaveNone,
            0x10 => MessageId::RejectRequest,
            0x11 => MessageId::AllowedFast,
            20 => MessageId::Extended,
            _ => return None,
        })
    }

    /// The rule for the frame length (id byte included) of a message with this id.
    pub(crate) fn length_rule(self) -> LengthRule {
        match self {
            MessageId::Choke
            | MessageId::Unchoke
            | MessageId::Interested
            | MessageId::NotInterested
            | MessageId::HaveAll
            | MessageId::HaveNone => LengthRule::Exactly(1),
            MessageId::Have | MessageId::Suggest | MessageId::AllowedFast => LengthRule::Exactly(5),
            MessageId::Request | MessageId::Cancel | MessageId::RejectRequest => {
                LengthRule::Exactly(13)
            }
            MessageId::Port => LengthRule::Exactly(3),
            MessageId::Bitfield => LengthRule::AtLeast(1),
            MessageId::Piece => LengthRule::AtLeast(9),
            MessageId::Extended => LengthRule::AtLeast(2),
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            MessageId::Choke => "choke",
            MessageId::Unchoke => "unchoke",
            MessageId::Interested => "interested",
            MessageId::NotInterested => "not interested",
            MessageId::Have => "have",
            MessageId::Bitfield => "bitfield",
            MessageId::Request => "request",
            MessageId::Piece => "piece",
            MessageId::Cancel => "cancel",
            MessageId::Port => "port",
            MessageId::Suggest => "suggest",
            MessageId::HaveAll => "have all",
            MessageId::HaveNone => "have none",
            MessageId::RejectRequest => "reject request",
            MessageId::AllowedFast => "allowed fast",
            MessageId::Extended => "extended",
        };
        write!(f, "{name} (id {})", *self as u8)
    }
}

/// How long a frame with a given id may be (counting the id byte, not the 4-byte prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LengthRule {
    /// Fixed-size messages.
    Exactly(u32),
    /// Messages with a variable payload after a fixed part.
    AtLeast(u32),
}

/// A block address: piece index, byte offset inside the piece, and length. Shared by `request`, `cancel`
/// and `reject request`, which must all name a block the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRequest {
    /// Zero-based piece index.
    pub index: u32,
    /// Byte offset of the block inside the piece.
    pub begin: u32,
    /// Block length in bytes (16 KiB except for a piece's last block).
    pub length: u32,
}

/// One peer wire message after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// A zero-length frame that only keeps the connection open.
    KeepAlive,
    /// BEP 3 `choke`.
    Choke,
    /// BEP 3 `unchoke`.
    Unchoke,
    /// BEP 3 `interested`.
    Interested,
    /// BEP 3 `not interested`.
    NotInterested,
    /// BEP 3 `have`: the sender verified this piece.
    Have {
        /// Zero-based piece index.
        piece: u32,
    },
    /// BEP 3 `bitfield`: raw bytes, high bit of byte 0 is piece 0. Spare bits are checked by the session,
    /// which knows the piece count.
    Bitfield(Bytes),
    /// BEP 3 `request`.
    Request(BlockRequest),
    /// BEP 3 `piece`: a block of data. `block` is a slice of the decoder's read buffer (never copied).
    Piece {
        /// Zero-based piece index.
        index: u32,
        /// Byte offset of the block inside the piece.
        begin: u32,
        /// The block's bytes.
        block: Bytes,
    },
    /// BEP 3 `cancel`.
    Cancel(BlockRequest),
    /// BEP 5 `port`: the sender's DHT UDP port.
    Port(u16),
    /// BEP 6 `suggest piece`.
    Suggest {
        /// Zero-based piece index.
        piece: u32,
    },
    /// BEP 6 `have all`.
    HaveAll,
    /// BEP 6 `have none`.
    HaveNone,
    /// BEP 6 `reject request`.
    RejectRequest(BlockRequest),
    /// BEP 6 `allowed fast`.
    AllowedFast {
        /// Zero-based piece index.
        piece: u32,
    },
    /// BEP 10 extended message: `id` 0 is the extension handshake, others are negotiated in it.
    Extended {
        /// Extended message id (0 = extension handshake).
        id: u8,
        /// The payload (usually bencoded, possibly followed by raw data as in BEP 9).
        payload: Bytes,
    },
}

/// Size of a `piece` message header on the wire: 4-byte length, id, index, begin.
pub const PIECE_HEADER_LEN: usize = 13;

/// The 4-byte length prefix value for `body_len` bytes after the id, or an error naming the message.
fn frame_len(id: MessageId, payload_len: usize, fixed: usize) -> Result<u32, EncodeError> {
    payload_len
        .checked_add(1 + fixed)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(EncodeError::TooLong {
            message: id,
            payload_len,
        })
}

/// Appends the 13-byte header of a `piece` message carrying `block_len` bytes. The caller then sends the
/// block itself (for example as a second buffer of a vectored write), so a block read from disk is never
/// copied into the send buffer.
pub fn encode_piece_header(
    index: u32,
    begin: u32,
    block_len: usize,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let len = frame_len(MessageId::Piece, block_len, 8)?;
    dst.reserve(PIECE_HEADER_LEN);
    dst.put_u32(len);
    dst.put_u8(MessageId::Piece as u8);
    dst.put_u32(index);
    dst.put_u32(begin);
    Ok(())
}

/// The 13-byte `piece` header as an array, for a driver that writes `[header, block]` vectored without a
/// send buffer at all.
pub fn piece_header(
    index: u32,
    begin: u32,
    block_len: usize,
) -> Result<[u8; PIECE_HEADER_LEN], EncodeError> {
    let len = frame_len(MessageId::Piece, block_len, 8)?;
    let mut out = [0u8; PIECE_HEADER_LEN];
    let mut w = &mut out[..];
    w.put_u32(len);
    w.put_u8(MessageId::Piece as u8);
    w.put_u32(index);
    w.put_u32(begin);
    Ok(out)
}

impl Message {
    /// The message's id byte (`None` for a keep-alive, which has none).
    pub fn id(&self) -> Option<MessageId> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => MessageId::Choke,
            Message::Unchoke => MessageId::Unchoke,
            Message::Interested => MessageId::Interested,
            Message::NotInterested => MessageId::NotInterested,
            Message::Have { .. } => MessageId::Have,
            Message::Bitfield(_) => MessageId::Bitfield,
            Message::Request(_) => MessageId::Request,
            Message::Piece { .. } => MessageId::Piece,
            Message::Cancel(_) => MessageId::Cancel,
            Message::Port(_) => MessageId::Port,
            Message::Suggest { .. } => MessageId::Suggest,
            Message::HaveAll => MessageId::HaveAll,
            Message::HaveNone => MessageId::HaveNone,
            Message::RejectRequest(_) => MessageId::RejectRequest,
            Message::AllowedFast { .. } => MessageId::AllowedFast,
            Message::Extended { .. } => MessageId::Extended,
        })
    }

    /// Bytes this message takes on the wire, 4-byte prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + match self {
            Message::KeepAlive => 0,
            Message::Bitfield(b) => 1 + b.len(),
            Message::Piece { block, .. } => 9 + block.len(),
            Message::Extended { payload, .. } => 2 + payload.len(),
            Message::Port(_) => 3,
            Message::Have { .. } | Message::Suggest { .. } | Message::AllowedFast { .. } => 5,
            Message::Request(_) | Message::Cancel(_) | Message::RejectRequest(_) => 13,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
        }
    }

    /// Appends the message's wire bytes to `dst`. Fails only if a payload is too long for the 4-byte
    /// length prefix (over 4 GiB), which no valid message is. For `piece`, prefer
    /// [`encode_piece_header`] plus a vectored write of the block to avoid copying it.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        fn block(dst: &mut BytesMut, id: MessageId, r: &BlockRequest) {
            dst.put_u32(13);
            dst.put_u8(id as u8);
            dst.put_u32(r.index);
            dst.put_u32(r.begin);
            dst.put_u32(r.length);
        }
        fn index(dst: &mut BytesMut, id: MessageId, piece: u32) {
            dst.put_u32(5);
            dst.put_u8(id as u8);
            dst.put_u32(piece);
        }
        fn bare(dst: &mut BytesMut, id: MessageId) {
            dst.put_u32(1);
            dst.put_u8(id as u8);
        }
        dst.reserve(self.encoded_len());
        match self {
            Message::KeepAlive => dst.put_u32(0),
            Message::Choke => bare(dst, MessageId::Choke),
            Message::Unchoke => bare(dst, MessageId::Unchoke),
            Message::Interested => bare(dst, MessageId::Interested),
            Message::NotInterested => bare(dst, MessageId::NotInterested),
            Message::HaveAll => bare(dst, MessageId::HaveAll),
            Message::HaveNone => bare(dst, MessageId::HaveNone),
            Message::Have { piece } => index(dst, MessageId::Have, *piece),
            Message::Suggest { piece } => index(dst, MessageId::Suggest, *piece),
            Message::AllowedFast { piece } => index(dst, MessageId::AllowedFast, *piece),
            Message::Request(r) => block(dst, MessageId::Request, r),
            Message::Cancel(r) => block(dst, MessageId::Cancel, r),
            Message::RejectRequest(r) => block(dst, MessageId::RejectRequest, r),
            Message::Port(port) => {
                dst.put_u32(3);
                dst.put_u8(MessageId::Port as u8);
                dst.put_u16(*port);
            }
            Message::Bitfield(bits) => {
                dst.put_u32(frame_len(MessageId::Bitfield, bits.len(), 0)?);
                dst.put_u8(MessageId::Bitfield as u8);
                dst.put_slice(bits);
            }
            Message::Piece {
                index,
                begin,
                block,
            } => {
                encode_piece_header(*index, *begin, block.len(), dst)?;
                dst.put_slice(block);
            }
            Message::Extended { id, payload } => {
                dst.put_u32(frame_len(MessageId::Extended, payload.len(), 1)?);
                dst.put_u8(MessageId::Extended as u8);
                dst.put_u8(*id);
                dst.put_slice(payload);
            }
        }
        Ok(())
    }
}

/// The integer fields of a fixed-size message body, parsed before the message is built so that the
/// hot path constructs the enum once, in its final place (building it through an `Option` costs a
/// stack round trip per message).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fields(pub(crate) u32, pub(crate) u32, pub(crate) u32);

/// Parses the body (bytes after the id) of a fixed-size message whose length the caller has already
/// checked against [`MessageId::length_rule`], with nom *complete* parsers: running short is an error
/// (`None`).
#[inline(always)]
pub(crate) fn parse_fixed_fields(body: &[u8]) -> Option<Fields> {
    type E<'a> = nom::error::Error<&'a [u8]>;
    Some(match body.len() {
        0 => Fields::default(),
        2 => Fields(u32::from(be_u16::<_, E<'_>>(body).ok()?.1), 0, 0),
        4 => Fields(be_u32::<_, E<'_>>(body).ok()?.1, 0, 0),
        12 => {
            // Three sequential parsers rather than `tuple`, which does not inline and returns its
            // output through memory.
            let (rest, a) = be_u32::<_, E<'_>>(body).ok()?;
            let (rest, b) = be_u32::<_, E<'_>>(rest).ok()?;
            let (_, c) = be_u32::<_, E<'_>>(rest).ok()?;
            Fields(a, b, c)
        }
        _ => return None,
    })
}

/// Builds a fixed-size message from its parsed fields. `None` for payload-carrying ids.
#[inline(always)]
pub(crate) fn fixed_message(id: MessageId, f: Fields) -> Option<Message> {
    let block = BlockRequest {
        index: f.0,
        begin: f.1,
        length: f.2,
    };
    Some(match id {
        MessageId::Choke => Message::Choke,
        MessageId::Unchoke => Message::Unchoke,
        MessageId::Interested => Message::Interested,
        MessageId::NotInterested => Message::NotInterested,
        MessageId::HaveAll => Message::HaveAll,
        MessageId::HaveNone => Message::HaveNone,
        MessageId::Have => Message::Have { piece: f.0 },
        MessageId::Suggest => Message::Suggest { piece: f.0 },
        MessageId::AllowedFast => Message::AllowedFast { piece: f.0 },
        MessageId::Request => Message::Request(block),
        MessageId::Cancel => Message::Cancel(block),
        MessageId::RejectRequest => Message::RejectRequest(block),
        // A u16 widened by the parser: the conversion back cannot fail for a 2-byte body.
        MessageId::Port => Message::Port(u16::try_from(f.0).ok()?),
        MessageId::Bitfield | MessageId::Piece | MessageId::Extended => return None,
    })
}

/// Parses a payload-carrying message from its whole frozen frame (4-byte prefix + id + body). The payload
/// is returned as a slice of `frame`, sharing its memory.
pub(crate) fn parse_payload(id: MessageId, frame: Bytes) -> Option<Message> {
    let body = frame.get(5..)?;
    Some(match id {
        MessageId::Bitfield => Message::Bitfield(frame.slice(5..)),
        MessageId::Piece => {
            let (_, (index, begin)) =
                tuple((be_u32::<_, nom::error::Error<&[u8]>>, be_u32))(body).ok()?;
            Message::Piece {
                index,
                begin,
                block: frame.slice(PIECE_HEADER_LEN..),
            }
        }
        MessageId::Extended => Message::Extended {
            id: *body.first()?,
            payload: frame.slice(6..),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(m: &Message) -> Vec<u8> {
        let mut b = BytesMut::new();
        m.encode(&mut b).expect("encodable");
        assert_eq!(b.len(), m.encoded_len(), "encoded_len of {m:?}");
        b.to_vec()
    }

    #[test]
    fn bep3_message_layouts() {
        assert_eq!(enc(&Message::KeepAlive), [0, 0, 0, 0]);
        assert_eq!(enc(&Message::Choke), [0, 0, 0, 1, 0]);
        assert_eq!(enc(&Message::Unchoke), [0, 0, 0, 1, 1]);
        assert_eq!(enc(&Message::Interested), [0, 0, 0, 1, 2]);
        assert_eq!(enc(&Message::NotInterested), [0, 0, 0, 1, 3]);
        assert_eq!(
            enc(&Message::Have { piece: 0x0102_0304 }),
            [0, 0, 0, 5, 4, 1, 2, 3, 4]
        );
        assert_eq!(
            enc(&Message::Bitfield(Bytes::from_static(&[0xff, 0x80]))),
            [0, 0, 0, 3, 5, 0xff, 0x80]
        );
        let r = BlockRequest {
            index: 1,
            begin: 0x4000,
            length: 0x4000,
        };
        assert_eq!(
            enc(&Message::Request(r)),
            [0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0]
        );
        assert_eq!(
            enc(&Message::Cancel(r)),
            [0, 0, 0, 13, 8, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0]
        );
        assert_eq!(
            enc(&Message::Piece {
                index: 2,
                begin: 0x10,
                block: Bytes::from_static(b"abc")
            }),
            [0, 0, 0, 12, 7, 0, 0, 0, 2, 0, 0, 0, 0x10, b'a', b'b', b'c']
        );
        // BEP 5: port is <len=0003><id=9><listen-port>.
        assert_eq!(enc(&Message::Port(6881)), [0, 0, 0, 3, 9, 0x1a, 0xe1]);
    }

    #[test]
    fn bep6_message_layouts() {
        // Have All: <len=0x0001><op=0x0E>; Have None: <len=0x0001><op=0x0F>.
        assert_eq!(enc(&Message::HaveAll), [0, 0, 0, 1, 0x0e]);
        assert_eq!(enc(&Message::HaveNone), [0, 0, 0, 1, 0x0f]);
        // Suggest Piece: <len=0x0005><op=0x0D><index>; Allowed Fast: <len=0x0005><op=0x11><index>.
        assert_eq!(
            enc(&Message::Suggest { piece: 7 }),
            [0, 0, 0, 5, 0x0d, 0, 0, 0, 7]
        );
        assert_eq!(
            enc(&Message::AllowedFast { piece: 7 }),
            [0, 0, 0, 5, 0x11, 0, 0, 0, 7]
        );
        // Reject Request: <len=0x000D><op=0x10><index><begin><length>.
        let r = BlockRequest {
            index: 3,
            begin: 0,
            length: 0x4000,
        };
        assert_eq!(
            enc(&Message::RejectRequest(r)),
            [0, 0, 0, 0x0d, 0x10, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0x40, 0]
        );
    }

    #[test]
    fn bep10_extended_layout() {
        // BEP 10: <len><id=20><extended id><payload>; extended id 0 is the extension handshake.
        let m = Message::Extended {
            id: 0,
            payload: Bytes::from_static(b"de"),
        };
        assert_eq!(enc(&m), [0, 0, 0, 4, 20, 0, b'd', b'e']);
    }

    #[test]
    fn piece_header_matches_full_encoding() {
        let block = Bytes::from(vec![9u8; 100]);
        let full = enc(&Message::Piece {
            index: 5,
            begin: 32,
            block: block.clone(),
        });
        let header = piece_header(5, 32, block.len()).expect("small block");
        assert_eq!(&full[..PIECE_HEADER_LEN], &header);
        let mut dst = BytesMut::new();
        encode_piece_header(5, 32, block.len(), &mut dst).expect("small block");
        assert_eq!(&dst[..], &header);
        assert_eq!(&full[PIECE_HEADER_LEN..], &block[..]);
    }

    #[test]
    fn oversized_payload_is_an_encode_error() {
        assert_eq!(
            piece_header(0, 0, u32::MAX as usize - 8),
            Err(EncodeError::TooLong {
                message: MessageId::Piece,
                payload_len: u32::MAX as usize - 8
            })
        );
        assert!(piece_header(0, 0, u32::MAX as usize - 9).is_ok());
    }

    #[test]
    fn ids_round_trip_and_unknown_ids_are_none() {
        for b in 0..=255u8 {
            if let Some(id) = MessageId::from_u8(b) {
                assert_eq!(id as u8, b);
            }
        }
        assert_eq!(MessageId::from_u8(10), None);
        assert_eq!(MessageId::from_u8(0x14), Some(MessageId::Extended));
        assert_eq!(MessageId::Have.to_string(), "have (id 4)");
    }
}

//! The peer wire protocol codec: the 68-byte handshake (BEP 3) with its reserved extension bits, every
//! message of BEP 3, BEP 5 (`port`), BEP 6 (fast extension) and BEP 10 (extended), an encoder into
//! [`bytes::BytesMut`], and a streaming [`Decoder`] that hands piece payloads out as zero-copy
//! [`bytes::Bytes`] slices of its read buffer.
//!
//! This module only frames and parses; what a message means for a connection (is a bitfield allowed
//! now, do its spare bits match the piece count, was a piece requested) is the peer session's job.

mod decoder;
mod framing;
mod handshake;
mod message;

pub use decoder::{
    max_frame_len_for, Decoded, Decoder, BLOCK_FRAME_LEN, DEFAULT_MAX_FRAME_LEN,
    DEFAULT_READ_CHUNK, EXTENSION_SLACK,
};
pub use framing::FrameTracker;
pub use handshake::{Handshake, Reserved, HANDSHAKE_LEN, PROTOCOL};
pub use message::{
    encode_piece_header, piece_header, BlockRequest, Message, MessageId, PIECE_HEADER_LEN,
};

/// Why the incoming byte stream was refused. Every variant is fatal for the connection; the decoder
/// keeps returning the same error. Offsets count bytes from the start of the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The first handshake byte (protocol name length) was not 19.
    #[error("handshake byte 0: protocol name length is {0}, expected 19")]
    BadProtocolLength(u8),
    /// The handshake's protocol name was not `BitTorrent protocol`.
    #[error(
        "handshake bytes 1..20: protocol name starts {name:?}, expected \"BitTorrent protocol\""
    )]
    BadProtocolName {
        /// The bytes received, lossily shown as text.
        name: String,
    },
    /// [`Handshake::parse`] was given a slice that is not 68 bytes long.
    #[error("handshake is {0} bytes long, expected 68")]
    HandshakeLength(usize),
    /// A length prefix above the configured maximum (refused before its body is buffered).
    #[error("frame at stream offset {offset}: length {len} exceeds the maximum {max}")]
    FrameTooLong {
        /// Stream offset of the length prefix.
        offset: u64,
        /// The announced length.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// A message id this client does not know.
    #[error("frame at stream offset {offset}: unknown message id {id}")]
    UnknownId {
        /// Stream offset of the length prefix.
        offset: u64,
        /// The id byte.
        id: u8,
    },
    /// A fixed-size message with the wrong length.
    #[error(
        "frame at stream offset {offset}: {message} message has length {len}, expected {expected}"
    )]
    WrongLength {
        /// Stream offset of the length prefix.
        offset: u64,
        /// Which message.
        message: MessageId,
        /// The announced length (id byte included).
        len: u32,
        /// The only valid length.
        expected: u32,
    },
    /// A variable-size message shorter than its fixed part.
    #[error(
        "frame at stream offset {offset}: {message} message has length {len}, needs at least {min}"
    )]
    TooShort {
        /// Stream offset of the length prefix.
        offset: u64,
        /// Which message.
        message: MessageId,
        /// The announced length (id byte included).
        len: u32,
        /// The minimum valid length.
        min: u32,
    },
    /// A body the complete parsers could not read (lengths are checked first, so this signals a bug).
    #[error(
        "frame at stream offset {offset}: {message} message of length {len} could not be parsed"
    )]
    Malformed {
        /// Stream offset of the length prefix.
        offset: u64,
        /// Which message.
        message: MessageId,
        /// The announced length (id byte included).
        len: u32,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload does not fit the 4-byte length prefix.
    #[error(
        "{message} message payload of {payload_len} bytes does not fit a 32-bit length prefix"
    )]
    TooLong {
        /// Which message.
        message: MessageId,
        /// The payload length asked for.
        payload_len: usize,
    },
}

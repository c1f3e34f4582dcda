//! The streaming peer wire decoder: bytes in any chunking go in, the handshake and then messages come out
//! in order.
//!
//! Framing uses a nom *streaming* parser for the 4-byte length (`Incomplete` means "wait for more
//! bytes"); a length over the configured maximum is refused from those 4 bytes alone, before any of the
//! body is buffered. Once the whole frame is buffered its body is parsed with *complete* parsers, where
//! running short is a protocol error. Payload-carrying frames (`piece`, `bitfield`, `extended`) are split
//! off the read buffer and frozen, so their payload is a `Bytes` slice of the very memory the socket read
//! into; fixed-size messages are parsed in place and skipped, with no allocation and no reference
//! counting.

use bytes::{Buf, BytesMut};
use nom::number::streaming::be_u32;

use super::handshake::{Handshake, HANDSHAKE_LEN};
use super::message::{
    fixed_message, parse_fixed_fields, parse_payload, LengthRule, Message, MessageId,
};
use super::DecodeError;

/// Length prefix (id byte included) of a `piece` message carrying a standard 16 KiB block: the frame limit
/// a connection needs once the bitfield phase is over (13 bytes on the wire with the 4-byte prefix).
pub const BLOCK_FRAME_LEN: u32 = 16 * 1024 + 9;

/// Default frame limit: 1 MiB of payload plus the 9 bytes of the largest fixed header. A bitfield takes one
/// bit per piece, so this admits torrents of up to 8 Mi pieces (e.g. 8 TiB in 1 MiB pieces, or any
/// torrent whose metadata is not yet known, as with a magnet link), while a hostile peer can make us
/// buffer at most ~1 MiB per connection. Use [`max_frame_len_for`] once the piece count is known.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 1024 * 1024 + 9;

/// Slack above [`BLOCK_FRAME_LEN`] for extension messages: a BEP 9 metadata piece is 16 KiB plus a
/// bencoded header under 100 bytes, and extension handshakes and PEX messages seen in practice are a few
/// hundred bytes; 4 KiB covers them with a wide margin.
pub const EXTENSION_SLACK: u32 = 4 * 1024;

/// Room [`Decoder::read_buf`] keeps beyond a read so that an ordinary frame (a 16 KiB block or an
/// extension message, 4-byte prefix included) that starts in the read also ends in the same allocation.
pub const FRAME_HEADROOM: usize = 4 + (BLOCK_FRAME_LEN + EXTENSION_SLACK) as usize;

/// A partial frame at least this long is not moved to a new allocation; the next read is shortened to
/// end on its boundary instead. 8 KiB is about what one read system call costs in copying time, so below
/// it moving the bytes is the cheaper choice.
pub const SHORT_READ_THRESHOLD: usize = 8 * 1024;

/// Default spare capacity offered to each socket read: 64 KiB, the usual TCP receive-window step and
/// enough for four 16 KiB blocks per read.
pub const DEFAULT_READ_CHUNK: usize = 64 * 1024;

/// The tightest sensible frame limit for a torrent of `piece_count` pieces: big enough for its bitfield
/// (one bit per piece, plus the id byte) and for a 16 KiB block or extension message, no bigger.
pub fn max_frame_len_for(piece_count: u32) -> u32 {
    let bitfield = piece_count.div_ceil(8).saturating_add(1);
    bitfield.max(BLOCK_FRAME_LEN + EXTENSION_SLACK)
}

/// One item from the stream: the handshake first, then messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The peer's 68-byte handshake (always the first item).
    Handshake(Handshake),
    /// A message after the handshake.
    Message(Message),
}

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the 68 handshake bytes.
    Handshake,
    /// Length-prefixed frames.
    Frames,
}

/// Streaming decoder for one connection's incoming bytes.
///
/// Use: after each socket read into [`Decoder::read_buf`] (or [`Decoder::extend`]), call
/// [`Decoder::decode`] until it returns `Ok(None)`. Draining after every read is what keeps the buffer
/// bounded: it then never holds more than one partial frame (at most `4 + max_frame_len` bytes) plus one
/// read. Errors are sticky: once `decode` fails, it returns the same error forever and the buffer is
/// released.
///
/// `bitfield` is only valid as the first message after the handshake; the decoder does not enforce this
/// (it cannot tell which extension messages a session tolerates first) but reports
/// [`Decoder::messages_decoded`] so the session can. Spare bits of a bitfield are checked by the session,
/// which knows the piece count.
#[derive(Debug)]
pub struct Decoder {
    /// Bytes received and not yet consumed; frames start at index 0.
    buf: BytesMut,
    /// Handshake or frames.
    phase: Phase,
    /// Largest accepted length prefix (id byte and body, not the prefix itself).
    max_frame_len: u32,
    /// Spare capacity [`Decoder::read_buf`] guarantees for one read.
    read_chunk: usize,
    /// The sticky error, once one happened.
    error: Option<DecodeError>,
    /// Stream offset of `buf[0]` (bytes consumed so far), for error messages.
    consumed: u64,
    /// Messages returned so far, handshake excluded.
    messages: u64,
    /// Spare capacity held back by [`Decoder::read_buf`] to end the current read on a frame boundary;
    /// rejoined before the next read.
    tail: Option<BytesMut>,
    /// Bytes the decoder had to move to a fresh allocation because a frame straddled the end of the old
    /// one (see [`Decoder::bytes_moved`]).
    moved: u64,
    /// The rest of a chunk given to [`Decoder::extend_owned`] after the bytes that were copied to
    /// complete a frame begun in another allocation: it becomes `buf` (without a copy) once that frame
    /// is decoded, so one straddling frame costs one frame's copy, not a copy of everything after it.
    pending: Option<BytesMut>,
}

impl Decoder {
    /// A decoder for a new connection: expects the 68-byte handshake, then frames of at most
    /// `max_frame_len` bytes after the 4-byte prefix (see [`DEFAULT_MAX_FRAME_LEN`],
    /// [`max_frame_len_for`]).
    pub fn new(max_frame_len: u32) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            phase: Phase::Handshake,
            max_frame_len,
            read_chunk: DEFAULT_READ_CHUNK,
            error: None,
            consumed: 0,
            messages: 0,
            tail: None,
            moved: 0,
            pending: None,
        }
    }

    /// A decoder for a stream whose handshake was already consumed elsewhere: starts with frames.
    pub fn new_after_handshake(max_frame_len: u32) -> Decoder {
        let mut d = Decoder::new(max_frame_len);
        d.phase = Phase::Frames;
        d
    }

    /// Sets the spare capacity offered to each read by [`Decoder::read_buf`] (at least 1 byte).
    pub fn with_read_chunk(mut self, read_chunk: usize) -> Decoder {
        self.read_chunk = read_chunk.max(1);
        self
    }

    /// Changes the frame limit, e.g. from [`DEFAULT_MAX_FRAME_LEN`] to [`max_frame_len_for`] once a magnet
    /// link's metadata (and so the piece count) is known. Applies from the next frame header on.
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = max_frame_len;
    }

    /// The current frame limit.
    pub fn max_frame_len(&self) -> u32 {
        self.max_frame_len
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.pending.as_ref().map_or(0, BytesMut::len)
    }

    /// Capacity of the current read buffer allocation (for memory accounting and tests).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
            + self.tail.as_ref().map_or(0, BytesMut::capacity)
            + self.pending.as_ref().map_or(0, BytesMut::capacity)
    }

    /// Whether the handshake has been decoded.
    pub fn handshake_done(&self) -> bool {
        self.phase == Phase::Frames
    }

    /// Messages returned after the handshake so far, the one just returned included: right after `decode`
    /// yields a `bitfield`, a value of 1 means it was the first message, as BEP 3 requires.
    pub fn messages_decoded(&self) -> u64 {
        self.messages
    }

    /// Stream offset (bytes since the first handshake byte, or since the first frame for
    /// [`Decoder::new_after_handshake`]) of the next undecoded byte.
    pub fn stream_offset(&self) -> u64 {
        self.consumed
    }

    /// Total bytes [`Decoder::read_buf`] copied when a partly received frame had to move to a new
    /// allocation because the old one was full. This is the only copy the decoder ever makes of received
    /// bytes: a partial frame shorter than [`SHORT_READ_THRESHOLD`] (or one larger than
    /// [`FRAME_HEADROOM`] that did not fit), at most once per allocation. Benches report it.
    pub fn bytes_moved(&self) -> u64 {
        self.moved
    }

    /// The sticky error, if decoding failed.
    pub fn error(&self) -> Option<&DecodeError> {
        self.error.as_ref()
    }

    /// Appends received bytes (copying them); tests and simple drivers use this.
    pub fn extend(&mut self, data: &[u8]) {
        self.rejoin_tail();
        self.join_pending();
        if self.error.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Appends a chunk the driver read into memory of its own, without copying it when possible: an
    /// empty buffer simply becomes the chunk, and a chunk that continues the very allocation the buffered
    /// partial frame lives in is joined in O(1). Only a partial frame left over from a *different*
    /// allocation costs a copy. A driver that reads in a separate task (and sizes its reads with a
    /// [`FrameTracker`](super::FrameTracker) so allocations end on frame boundaries) uses this instead
    /// of [`Decoder::read_buf`].
    pub fn extend_owned(&mut self, chunk: BytesMut) {
        self.rejoin_tail();
        if self.error.is_some() || chunk.is_empty() {
            return;
        }
        if let Some(p) = &mut self.pending {
            // Behind bytes still waiting: joined in O(1) when it continues them (the usual case).
            p.unsplit(chunk);
            return;
        }
        if self.buf.is_empty() {
            // Also drops our hold on the previous chunk's allocation.
            self.buf = chunk;
            return;
        }
        let end = self.buf.as_ptr().wrapping_add(self.buf.len());
        if end == chunk.as_ptr() {
            self.buf.unsplit(chunk);
            return;
        }
        if self.missing_for_current() == 0 {
            // A whole frame is still buffered (the caller stopped decoding early): join by copying.
            self.moved += (self.buf.len() + chunk.len()) as u64;
            self.buf.unsplit(chunk);
            return;
        }
        // Not a continuation: copy just the bytes that complete the current frame (its length
        // prefix first, then its body) and keep the rest of the chunk as it is.
        let mut chunk = chunk;
        loop {
            let need = self.missing_for_current();
            if need == 0 || chunk.is_empty() {
                break;
            }
            let head = chunk.split_to(need.min(chunk.len()));
            self.moved += head.len() as u64;
            self.buf.extend_from_slice(&head);
        }
        if !chunk.is_empty() {
            self.pending = Some(chunk);
        }
    }

    /// Moves [`Decoder::pending`] bytes back behind `buf` (for the paths that append to `buf`).
    fn join_pending(&mut self) {
        if let Some(p) = self.pending.take() {
            if self.buf.is_empty() {
                self.buf = p;
            } else {
                self.moved += p.len() as u64;
                self.buf.unsplit(p);
            }
        }
    }

    /// Bytes still missing for the frame (or handshake) at the front of the buffer, if its size is known
    /// and allowed.
    fn missing_for_current(&self) -> usize {
        let total = match self.phase {
            Phase::Handshake => HANDSHAKE_LEN,
            Phase::Frames => match self.buf.first_chunk::<4>() {
                Some(prefix) => {
                    let len = u32::from_be_bytes(*prefix);
                    if len > self.max_frame_len {
                        return 0;
                    }
                    4 + len as usize
                }
                None => 4,
            },
        };
        total.saturating_sub(self.buf.len())
    }

    /// Puts back the spare capacity [`Decoder::read_buf`] held back to shorten a read.
    #[inline]
    fn rejoin_tail(&mut self) {
        if let Some(tail) = self.tail.take() {
            // O(1) when contiguous, which it is unless a frozen frame was split off in between, and then
            // `buf` is empty and simply becomes `tail`.
            self.buf.unsplit(tail);
        }
    }

    /// The read buffer with spare capacity for the next socket read. A driver reads straight into the
    /// spare capacity (e.g. tokio's `AsyncReadExt::read_buf`, which reads at most that much), so a piece
    /// payload goes socket -> buffer -> `Bytes` with no copy. Call [`Decoder::decode`] until it returns
    /// `Ok(None)` after every read. After an error the buffer is left empty and no capacity is reserved.
    ///
    /// How the spare capacity is chosen, so that payload bytes are not moved either:
    /// - normally at least the read chunk plus [`FRAME_HEADROOM`], so any ordinary frame that starts in
    ///   this read also ends inside the same allocation; or, while the frame being received still needs
    ///   at least a read chunk and fits, as much as there is (a read of the usual size stays inside it);
    /// - when the allocation is nearly used up while a large part of a frame (at least
    ///   [`SHORT_READ_THRESHOLD`] bytes) is already buffered, exactly the bytes that frame still needs: the
    ///   read ends on the frame boundary and the next read starts a fresh allocation with nothing to carry
    ///   over (one extra, shorter read instead of a copy);
    /// - otherwise a fresh (or reclaimed) allocation, moving the few buffered bytes of a partial frame;
    ///   [`Decoder::bytes_moved`] counts them.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        self.rejoin_tail();
        self.join_pending();
        if self.error.is_some() {
            return &mut self.buf;
        }
        let len = self.buf.len();
        let spare = self.buf.capacity() - len;
        let missing = self.missing_for_current();
        let want = self.read_chunk.max(missing) + FRAME_HEADROOM;
        if spare >= want {
            return &mut self.buf;
        }
        if missing >= self.read_chunk && spare >= missing && len >= 4 {
            // A read of the usual size stays inside the current frame, which fits.
            return &mut self.buf;
        }
        if len >= SHORT_READ_THRESHOLD && missing > 0 && spare >= missing {
            self.tail = Some(self.buf.split_off(len + missing));
            return &mut self.buf;
        }
        // Reuses the allocation when no frozen frame still points into it (moving the partial frame to
        // the front), otherwise starts a new one.
        self.moved += len as u64;
        if !self.buf.try_reclaim(want) {
            let mut fresh = BytesMut::with_capacity(len + want);
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
        &mut self.buf
    }

    /// Decodes the next item, `Ok(None)` when more bytes are needed. Once an error is returned, every later
    /// call returns it again.
    #[inline]
    pub fn decode(&mut self) -> Result<Option<Decoded>, DecodeError> {
        if self.pending.is_some() {
            return self.decode_with_pending();
        }
        self.decode_buffered()
    }

    /// [`Decoder::decode`] while bytes wait in [`Decoder::pending`]: they become the buffer once it is
    /// empty; should the buffer end in an incomplete frame all the same, they are joined to it.
    #[cold]
    fn decode_with_pending(&mut self) -> Result<Option<Decoded>, DecodeError> {
        if self.buf.is_empty() {
            self.buf = self.pending.take().unwrap_or_default();
            return self.decode_buffered();
        }
        match self.decode_buffered() {
            Ok(None) if self.error.is_none() => {
                self.join_pending();
                self.decode_buffered()
            }
            r => r,
        }
    }

    /// One item from `buf` alone.
    #[inline(always)]
    fn decode_buffered(&mut self) -> Result<Option<Decoded>, DecodeError> {
        if self.phase == Phase::Frames && self.error.is_none() {
            // Returned directly (not inspected here) so the message is built once, in the caller's slot.
            return self.decode_frame();
        }
        self.decode_slow()
    }

    /// The rarely taken paths of [`Decoder::decode`]: the sticky error and the handshake.
    #[cold]
    fn decode_slow(&mut self) -> Result<Option<Decoded>, DecodeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match self.decode_handshake() {
            Ok(item) => Ok(item),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Records an error as sticky, releases the buffer, and hands the error back.
    #[cold]
    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.error = Some(e.clone());
        self.buf = BytesMut::new();
        self.tail = None;
        self.pending = None;
        e
    }

    /// The handshake phase: refuse a wrong protocol prefix as soon as its bytes arrive.
    fn decode_handshake(&mut self) -> Result<Option<Decoded>, DecodeError> {
        let head = self.buf.get(..self.buf.len().min(20)).unwrap_or(&[]);
        Handshake::check_prefix(head)?;
        let Some(bytes) = self.buf.get(..HANDSHAKE_LEN) else {
            return Ok(None);
        };
        let hs = Handshake::parse(bytes)?;
        self.buf.advance(HANDSHAKE_LEN);
        self.consumed += HANDSHAKE_LEN as u64;
        self.phase = Phase::Frames;
        Ok(Some(Decoded::Handshake(hs)))
    }

    /// The frame phase: one length-prefixed message.
    #[inline(always)]
    fn decode_frame(&mut self) -> Result<Option<Decoded>, DecodeError> {
        let len = match be_u32::<_, nom::error::Error<&[u8]>>(&self.buf[..]) {
            Ok((_, len)) => len,
            // Incomplete: fewer than 4 bytes so far. (A 4-byte big-endian read cannot fail otherwise.)
            Err(_) => return Ok(None),
        };
        let offset = self.consumed;
        if len > self.max_frame_len {
            return Err(self.fail(DecodeError::FrameTooLong {
                offset,
                len,
                max: self.max_frame_len,
            }));
        }
        if len == 0 {
            self.buf.advance(4);
            self.consumed += 4;
            self.messages += 1;
            return Ok(Some(Decoded::Message(Message::KeepAlive)));
        }
        // Check the id and its length rule as soon as the id byte is here, before waiting for the body.
        let Some(&id_byte) = self.buf.get(4) else {
            return Ok(None);
        };
        let Some(id) = MessageId::from_u8(id_byte) else {
            return Err(self.fail(DecodeError::UnknownId {
                offset,
                id: id_byte,
            }));
        };
        match id.length_rule() {
            LengthRule::Exactly(n) if len != n => {
                return Err(self.fail(DecodeError::WrongLength {
                    offset,
                    message: id,
                    len,
                    expected: n,
                }))
            }
            LengthRule::AtLeast(n) if len < n => {
                return Err(self.fail(DecodeError::TooShort {
                    offset,
                    message: id,
                    len,
                    min: n,
                }))
            }
            _ => {}
        }
        let total = 4 + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let malformed = || DecodeError::Malformed {
            offset,
            message: id,
            len,
        };
        if let MessageId::Piece | MessageId::Bitfield | MessageId::Extended = id {
            let Some(msg) = parse_payload(id, self.buf.split_to(total).freeze()) else {
                return Err(self.fail(malformed()));
            };
            self.consumed += total as u64;
            self.messages += 1;
            return Ok(Some(Decoded::Message(msg)));
        }
        let Some(fields) = self.buf.get(5..total).and_then(parse_fixed_fields) else {
            return Err(self.fail(malformed()));
        };
        let Some(msg) = fixed_message(id, fields) else {
            return Err(self.fail(malformed()));
        };
        self.buf.advance(total);
        self.consumed += total as u64;
        self.messages += 1;
        Ok(Some(Decoded::Message(msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{InfoHash, PeerId};
    use crate::wire::{BlockRequest, Reserved};
    use bytes::Bytes;

    fn handshake() -> Handshake {
        Handshake::new(
            InfoHash([0xab; 20]),
            PeerId(*b"-XX0001-123456789012"),
            Reserved::FAST | Reserved::EXTENSION_PROTOCOL,
        )
    }

    fn drain(d: &mut Decoder) -> Vec<Decoded> {
        let mut out = Vec::new();
        while let Some(item) = d.decode().expect("valid stream") {
            out.push(item);
        }
        out
    }

    /// Handshake + bitfield + have, as one peer typically sends them, as raw bytes.
    fn opening_bytes() -> Vec<u8> {
        let mut v = handshake().to_bytes().to_vec();
        v.extend_from_slice(&[0, 0, 0, 3, 5, 0b1010_0000, 0b0100_0000]);
        v.extend_from_slice(&[0, 0, 0, 5, 4, 0, 0, 0, 9]);
        v
    }

    fn opening_items() -> Vec<Decoded> {
        vec![
            Decoded::Handshake(handshake()),
            Decoded::Message(Message::Bitfield(Bytes::from_static(&[
                0b1010_0000,
                0b0100_0000,
            ]))),
            Decoded::Message(Message::Have { piece: 9 }),
        ]
    }

    #[test]
    fn handshake_bitfield_and_have_in_one_read() {
        let mut d = Decoder::new(DEFAULT_MAX_FRAME_LEN);
        d.extend(&opening_bytes());
        let mut items = Vec::new();
        while let Some(item) = d.decode().expect("valid") {
            if matches!(item, Decoded::Message(Message::Bitfield(_))) {
                assert_eq!(d.messages_decoded(), 1, "bitfield is the first message");
            }
            items.push(item);
        }
        assert_eq!(items, opening_items());
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.stream_offset(), opening_bytes().len() as u64);
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut d = Decoder::new(DEFAULT_MAX_FRAME_LEN);
        let mut items = Vec::new();
        for b in opening_bytes() {
            d.extend(&[b]);
            items.extend(drain(&mut d));
        }
        assert_eq!(items, opening_items());
    }

    #[test]
    fn read_buf_path_delivers_piece_payload_without_copy() {
        let mut stream = BytesMut::new();
        handshake().encode(&mut stream);
        let block = Bytes::from(vec![0x5a; 16 * 1024]);
        let msg = Message::Piece {
            index: 1,
            begin: 0,
            block,
        };
        msg.encode(&mut stream).expect("encodable");
        let mut d = Decoder::new(BLOCK_FRAME_LEN);
        let buf = d.read_buf();
        assert!(buf.capacity() - buf.len() >= DEFAULT_READ_CHUNK);
        let base = buf.as_ptr() as usize;
        buf.extend_from_slice(&stream);
        let items = drain(&mut d);
        assert_eq!(items.len(), 2);
        let Decoded::Message(Message::Piece { block, .. }) = &items[1] else {
            panic!("expected a piece, got {:?}", items[1]);
        };
        // The block points into the read buffer, right after handshake + 13-byte header.
        assert_eq!(block.as_ptr() as usize, base + HANDSHAKE_LEN + 13);
        assert_eq!(items[1], Decoded::Message(msg));
        assert_eq!(d.bytes_moved(), 0);
    }

    /// Simulates socket reads of up to `chunk` bytes into `read_buf` (a read never exceeds the spare
    /// capacity); returns the decoded items and the number of reads.
    fn read_through(d: &mut Decoder, stream: &[u8], chunk: usize) -> (Vec<Decoded>, usize) {
        let (mut items, mut reads, mut pos) = (Vec::new(), 0, 0);
        while pos < stream.len() {
            let buf = d.read_buf();
            let n = chunk
                .min(buf.capacity() - buf.len())
                .min(stream.len() - pos);
            assert!(n > 0, "read_buf offered no room");
            buf.extend_from_slice(&stream[pos..pos + n]);
            pos += n;
            reads += 1;
            items.extend(drain(d));
        }
        (items, reads)
    }

    /// Appends `count` 16 KiB piece messages to `stream` (and their decoded form to `want`), with a
    /// `have` after every `have_every`-th so that frame boundaries shift.
    fn push_pieces(stream: &mut BytesMut, want: &mut Vec<Decoded>, count: u32, have_every: u32) {
        for i in 0..count {
            let m = Message::Piece {
                index: i,
                begin: 0,
                block: Bytes::from(vec![i as u8; 16 * 1024]),
            };
            m.encode(stream).expect("encodable");
            want.push(Decoded::Message(m));
            if i % have_every == 0 {
                Message::Have { piece: i }
                    .encode(stream)
                    .expect("encodable");
                want.push(Decoded::Message(Message::Have { piece: i }));
            }
        }
    }

    #[test]
    fn piece_stream_is_never_moved_whatever_the_read_size() {
        let mut stream = BytesMut::new();
        let mut want = Vec::new();
        push_pieces(&mut stream, &mut want, 64, 5);
        for chunk in [1460, 4096, 16 * 1024 + 13, 64 * 1024, 256 * 1024] {
            let mut d = Decoder::new_after_handshake(BLOCK_FRAME_LEN).with_read_chunk(chunk);
            let (items, reads) = read_through(&mut d, &stream, chunk);
            assert_eq!(items, want, "chunk {chunk}");
            assert_eq!(d.bytes_moved(), 0, "chunk {chunk}");
            // Shortened reads cost at most one extra read per allocation.
            assert!(
                reads <= 2 * stream.len().div_ceil(chunk) + 2,
                "chunk {chunk}: {reads} reads"
            );
        }
    }

    /// Chunks that each live in an allocation of their own (as after a transform layer in front of the
    /// decoder, or a reader whose frame tracking is off): every item still decodes, only the bytes that
    /// complete a straddling frame are copied (not the chunks behind them), and a caller that stops
    /// decoding early loses nothing.
    #[test]
    fn chunks_from_separate_allocations_copy_only_the_straddling_frames() {
        let mut stream = BytesMut::from(&opening_bytes()[..]);
        let mut want = opening_items();
        push_pieces(&mut stream, &mut want, 48, 3);
        for (chunk, stop_early) in [
            (1, false),
            (3, false),
            (4097, true),
            (70_001, false),
            (70_001, true),
        ] {
            let mut d = Decoder::new(BLOCK_FRAME_LEN);
            let mut items = Vec::new();
            let mut chunks = 0u64;
            for (n, piece) in stream.chunks(chunk).enumerate() {
                d.extend_owned(BytesMut::from(piece));
                chunks += 1;
                if stop_early && n % 2 == 0 {
                    // Takes one item only, leaving whole frames buffered.
                    if let Some(item) = d.decode().expect("valid stream") {
                        items.push(item);
                    }
                } else {
                    items.extend(drain(&mut d));
                }
            }
            items.extend(drain(&mut d));
            assert_eq!(items, want, "chunk {chunk}");
            assert_eq!(d.buffered(), 0);
            if !stop_early {
                let frame = (16 * 1024 + 13) as u64;
                assert!(
                    d.bytes_moved() <= chunks * frame,
                    "chunk {chunk}: moved {}",
                    d.bytes_moved()
                );
                assert!(d.bytes_moved() < stream.len() as u64 / 2 || chunk < frame as usize);
            }
        }
    }

    #[test]
    fn read_buf_reserves_room_for_the_rest_of_a_large_frame() {
        let mut d = Decoder::new_after_handshake(DEFAULT_MAX_FRAME_LEN).with_read_chunk(1460);
        // Header of a 200 KiB bitfield frame.
        d.extend(&(200 * 1024u32 + 1).to_be_bytes());
        d.extend(&[5]);
        assert_eq!(d.decode(), Ok(None));
        let buf = d.read_buf();
        assert!(buf.capacity() - buf.len() >= 200 * 1024 + 1 + 4 - 5);
    }

    #[test]
    fn hostile_length_is_refused_without_allocating() {
        let mut d = Decoder::new(DEFAULT_MAX_FRAME_LEN);
        d.extend(&handshake().to_bytes());
        d.extend(&[0xff, 0xff, 0xff, 0xff]);
        let cap_before = d.capacity();
        assert!(matches!(d.decode(), Ok(Some(Decoded::Handshake(_)))));
        let err = DecodeError::FrameTooLong {
            offset: HANDSHAKE_LEN as u64,
            len: u32::MAX,
            max: DEFAULT_MAX_FRAME_LEN,
        };
        assert_eq!(d.decode(), Err(err.clone()));
        assert!(d.capacity() <= cap_before);
        // Sticky, and the read buffer no longer grows.
        assert_eq!(d.decode(), Err(err.clone()));
        assert_eq!(d.read_buf().capacity(), 0);
        d.extend(&[0, 0, 0, 0]);
        assert_eq!(d.decode(), Err(err));
        assert!(d.error().is_some());
    }

    #[test]
    fn hostile_length_before_body_arrives() {
        // Just over the limit: refused from the 4-byte prefix alone.
        let mut d = Decoder::new_after_handshake(BLOCK_FRAME_LEN);
        d.extend(&(BLOCK_FRAME_LEN + 1).to_be_bytes());
        assert_eq!(
            d.decode(),
            Err(DecodeError::FrameTooLong {
                offset: 0,
                len: BLOCK_FRAME_LEN + 1,
                max: BLOCK_FRAME_LEN
            })
        );
        // At the limit: accepted and waited for.
        let mut d = Decoder::new_after_handshake(BLOCK_FRAME_LEN);
        d.extend(&BLOCK_FRAME_LEN.to_be_bytes());
        d.extend(&[7]);
        assert_eq!(d.decode(), Ok(None));
    }

    #[test]
    fn unknown_id_is_an_error_with_offset() {
        let mut d = Decoder::new(DEFAULT_MAX_FRAME_LEN);
        d.extend(&handshake().to_bytes());
        d.extend(&[0, 0, 0, 1, 2]); // interested
        d.extend(&[0, 0, 0, 1, 0x0a]); // id 10: unassigned
        assert!(matches!(d.decode(), Ok(Some(Decoded::Handshake(_)))));
        assert_eq!(d.decode(), Ok(Some(Decoded::Message(Message::Interested))));
        let err = d.decode().expect_err("unknown id");
        assert_eq!(err, DecodeError::UnknownId { offset: 73, id: 10 });
        assert_eq!(
            err.to_string(),
            "frame at stream offset 73: unknown message id 10"
        );
    }

    #[test]
    fn have_with_three_bytes_is_a_wrong_length() {
        let mut d = Decoder::new_after_handshake(DEFAULT_MAX_FRAME_LEN);
        // Only the prefix and id are needed to refuse it.
        d.extend(&[0, 0, 0, 4, 4]);
        let err = d.decode().expect_err("wrong length");
        assert_eq!(
            err,
            DecodeError::WrongLength {
                offset: 0,
                message: MessageId::Have,
                len: 4,
                expected: 5
            }
        );
        assert_eq!(
            err.to_string(),
            "frame at stream offset 0: have (id 4) message has length 4, expected 5"
        );
    }

    #[test]
    fn short_piece_and_extended_are_refused() {
        let mut d = Decoder::new_after_handshake(DEFAULT_MAX_FRAME_LEN);
        d.extend(&[0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            d.decode(),
            Err(DecodeError::TooShort {
                message: MessageId::Piece,
                len: 8,
                min: 9,
                ..
            })
        ));
        let mut d = Decoder::new_after_handshake(DEFAULT_MAX_FRAME_LEN);
        d.extend(&[0, 0, 0, 1, 20]);
        assert!(matches!(
            d.decode(),
            Err(DecodeError::TooShort {
                message: MessageId::Extended,
                ..
            })
        ));
    }

    #[test]
    fn wrong_protocol_is_refused_at_the_first_byte() {
        let mut d = Decoder::new(DEFAULT_MAX_FRAME_LEN);
        d.extend(&[0x16]); // a TLS record, say
        assert_eq!(d.decode(), Err(DecodeError::BadProtocolLength(0x16)));
        let mut d = Decoder::new(DEFAULT_MAX_FRAME_LEN);
        d.extend(b"\x13BitTorrent pro");
        assert_eq!(d.decode(), Ok(None));
        d.extend(b"xocol");
        assert!(matches!(
            d.decode(),
            Err(DecodeError::BadProtocolName { .. })
        ));
    }

    #[test]
    fn all_messages_decode_from_bep_byte_vectors() {
        let cases: Vec<(Vec<u8>, Message)> = vec![
            (vec![0, 0, 0, 0], Message::KeepAlive),
            (vec![0, 0, 0, 1, 0], Message::Choke),
            (vec![0, 0, 0, 1, 1], Message::Unchoke),
            (vec![0, 0, 0, 1, 2], Message::Interested),
            (vec![0, 0, 0, 1, 3], Message::NotInterested),
            (
                vec![0, 0, 0, 5, 4, 0, 0, 1, 0],
                Message::Have { piece: 256 },
            ),
            (
                vec![0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
                Message::Request(BlockRequest {
                    index: 1,
                    begin: 0x4000,
                    length: 0x4000,
                }),
            ),
            (
                vec![0, 0, 0, 13, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0],
                Message::Cancel(BlockRequest {
                    index: 1,
                    begin: 0,
                    length: 0x4000,
                }),
            ),
            (vec![0, 0, 0, 3, 9, 0x1a, 0xe1], Message::Port(6881)),
            (
                vec![0, 0, 0, 5, 0x0d, 0, 0, 0, 2],
                Message::Suggest { piece: 2 },
            ),
            (vec![0, 0, 0, 1, 0x0e], Message::HaveAll),
            (vec![0, 0, 0, 1, 0x0f], Message::HaveNone),
            (
                vec![0, 0, 0, 0x0d, 0x10, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0x40, 0],
                Message::RejectRequest(BlockRequest {
                    index: 3,
                    begin: 0,
                    length: 0x4000,
                }),
            ),
            (
                vec![0, 0, 0, 5, 0x11, 0, 0, 0, 4],
                Message::AllowedFast { piece: 4 },
            ),
            (
                vec![
                    0, 0, 0, 0x0c, 7, 0, 0, 0, 2, 0, 0, 0, 0x10, b'a', b'b', b'c',
                ],
                Message::Piece {
                    index: 2,
                    begin: 0x10,
                    block: Bytes::from_static(b"abc"),
                },
            ),
            (
                vec![0, 0, 0, 4, 20, 0, b'd', b'e'],
                Message::Extended {
                    id: 0,
                    payload: Bytes::from_static(b"de"),
                },
            ),
        ];
        for (bytes, want) in cases {
            let mut d = Decoder::new_after_handshake(DEFAULT_MAX_FRAME_LEN);
            d.extend(&bytes);
            assert_eq!(
                d.decode(),
                Ok(Some(Decoded::Message(want.clone()))),
                "{bytes:?}"
            );
            assert_eq!(d.decode(), Ok(None));
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn frame_limit_for_piece_count() {
        assert_eq!(max_frame_len_for(10), BLOCK_FRAME_LEN + EXTENSION_SLACK);
        // 1 Mi pieces need a 128 KiB bitfield plus the id byte.
        assert_eq!(max_frame_len_for(1 << 20), (1 << 17) + 1);
        assert_eq!(max_frame_len_for(u32::MAX), (1 << 29) + 1);
    }
}

//! Following frame boundaries in a peer wire byte stream without decoding it.
//!
//! A driver whose socket reads happen away from the [`Decoder`](super::Decoder) (a reader task that
//! hands owned chunks to the event loop) uses a [`FrameTracker`] to size its reads: when its read
//! buffer is nearly full, it reads exactly the rest of the current frame, so the next allocation starts
//! on a frame boundary and the decoder never has to move a partial frame between allocations.
//!
//! The tracker only counts bytes; it never refuses anything. What a length means (too long, unknown id)
//! is the decoder's business. On a stream that is not the peer wire (an HTTP tracker connection read by
//! the same task) it reports nonsense boundaries or gives up, which only changes read sizes: a driver
//! must never hold bytes back because of it.

use super::handshake::HANDSHAKE_LEN;

/// Where the tracker is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside the 68-byte handshake: this many bytes of it are still to come.
    Handshake(usize),
    /// Inside a 4-byte length prefix: `got` bytes of it so far.
    Prefix { got: u8, bytes: [u8; 4] },
    /// Inside a frame body: this many bytes are still to come.
    Body(u64),
}

/// Counts a peer wire stream's bytes to know where the current frame (or the handshake) ends.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    state: State,
}

impl Default for FrameTracker {
    fn default() -> Self {
        FrameTracker::new()
    }
}

impl FrameTracker {
    /// A tracker for a new connection: the 68-byte handshake comes first.
    pub fn new() -> FrameTracker {
        FrameTracker {
            state: State::Handshake(HANDSHAKE_LEN),
        }
    }

    /// A tracker for a stream already past its handshake (frames from the first byte).
    pub fn after_handshake() -> FrameTracker {
        FrameTracker {
            state: State::Prefix {
                got: 0,
                bytes: [0; 4],
            },
        }
    }

    /// Notes `data`, the next bytes of the stream.
    pub fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Handshake(left) => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = data.get(n..).unwrap_or_default();
                    if *left == 0 {
                        self.state = State::Prefix {
                            got: 0,
                            bytes: [0; 4],
                        };
                    }
                }
                State::Body(left) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    *left -= n as u64;
                    data = data.get(n..).unwrap_or_default();
                    if *left == 0 {
                        self.state = State::Prefix {
                            got: 0,
                            bytes: [0; 4],
                        };
                    }
                }
                State::Prefix { got, bytes } => {
                    // Fast path: a whole prefix and (part of) the body at once.
                    if *got == 0 {
                        if let Some((prefix, rest)) = data.split_first_chunk::<4>() {
                            let len = u64::from(u32::from_be_bytes(*prefix));
                            data = rest;
                            if len > 0 {
                                self.state = State::Body(len);
                            }
                            continue;
                        }
                    }
                    let (&b, rest) = match data.split_first() {
                        Some(x) => x,
                        None => break,
                    };
                    data = rest;
                    if let Some(slot) = bytes.get_mut(usize::from(*got)) {
                        *slot = b;
                    }
                    *got += 1;
                    if *got == 4 {
                        let len = u64::from(u32::from_be_bytes(*bytes));
                        self.state = if len > 0 {
                            State::Body(len)
                        } else {
                            State::Prefix {
                                got: 0,
                                bytes: [0; 4],
                            }
                        };
                    }
                }
            }
        }
    }

    /// Bytes still to come before the stream is on a frame boundary: `Some(0)` right at one, `None`
    /// when that is not known yet (inside a length prefix).
    pub fn until_boundary(&self) -> Option<u64> {
        match self.state {
            State::Handshake(left) => Some(left as u64),
            State::Body(left) => Some(left),
            State::Prefix { got: 0, .. } => Some(0),
            State::Prefix { .. } => None,
        }
    }

    /// Bytes to read before the tracker knows more: the rest of the frame (or handshake), or inside a
    /// length prefix the rest of the prefix. 0 right at a frame boundary. Reading exactly this much,
    /// repeatedly, walks the stream frame by frame up to a boundary.
    pub fn next_stop(&self) -> u64 {
        match self.state {
            State::Handshake(left) => left as u64,
            State::Body(left) => left,
            State::Prefix { got, .. } => u64::from((4 - got) % 4),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;

    use super::*;
    use crate::types::{InfoHash, PeerId};
    use crate::wire::{Handshake, Message, Reserved};

    /// A handshake and a few messages, with the stream offsets of every frame boundary.
    fn stream() -> (Vec<u8>, Vec<usize>) {
        let mut buf = BytesMut::new();
        Handshake::new(InfoHash([1; 20]), PeerId([2; 20]), Reserved::FAST).encode(&mut buf);
        let mut ends = vec![buf.len()];
        let messages = [
            Message::Bitfield(Bytes::from_static(&[0xff, 0x80])),
            Message::KeepAlive,
            Message::Unchoke,
            Message::Have { piece: 7 },
            Message::Piece {
                index: 1,
                begin: 0,
                block: Bytes::from(vec![9u8; 16384]),
            },
            Message::KeepAlive,
        ];
        for m in &messages {
            m.encode(&mut buf).unwrap();
            ends.push(buf.len());
        }
        (buf.to_vec(), ends)
    }

    #[test]
    fn finds_every_boundary_byte_by_byte() {
        let (bytes, ends) = stream();
        let mut t = FrameTracker::new();
        for (i, b) in bytes.iter().enumerate() {
            t.advance(std::slice::from_ref(b));
            let at = i + 1;
            if ends.contains(&at) {
                assert_eq!(t.until_boundary(), Some(0), "offset {at}");
            } else {
                assert_ne!(t.until_boundary(), Some(0), "offset {at}");
            }
        }
    }

    #[test]
    fn knows_how_much_of_a_frame_is_missing() {
        let (bytes, ends) = stream();
        let mut t = FrameTracker::new();
        t.advance(&bytes[..10]);
        assert_eq!(t.until_boundary(), Some(58));
        let piece_end = ends[5];
        t.advance(&bytes[10..piece_end - 100]);
        assert_eq!(t.until_boundary(), Some(100));
        t.advance(&bytes[piece_end - 100..piece_end + 2]);
        assert_eq!(t.until_boundary(), None, "inside the keep-alive's prefix");
        t.advance(&bytes[piece_end + 2..]);
        assert_eq!(t.until_boundary(), Some(0));
    }

    #[test]
    fn next_stop_walks_frame_by_frame() {
        let (bytes, ends) = stream();
        let mut t = FrameTracker::new();
        let mut at = 0;
        let mut stops = Vec::new();
        while at < bytes.len() {
            let step = match t.next_stop() {
                0 => 1, // at a boundary: read a byte of the next prefix
                n => n as usize,
            };
            t.advance(&bytes[at..at + step]);
            at += step;
            if t.next_stop() == 0 {
                stops.push(at);
            }
        }
        assert_eq!(stops, ends);
    }

    #[test]
    fn after_handshake_starts_with_a_prefix() {
        let mut t = FrameTracker::after_handshake();
        assert_eq!(t.until_boundary(), Some(0));
        t.advance(&[0, 0, 0, 5, 4]);
        assert_eq!(t.until_boundary(), Some(4));
    }

    proptest! {
        /// Any chunking of the stream gives the same answer at the chunk ends as byte-by-byte feeding.
        #[test]
        fn chunking_does_not_matter(cuts in proptest::collection::vec(0usize..17_000, 0..8)) {
            let (bytes, _) = stream();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % bytes.len()).collect();
            cuts.sort_unstable();
            let mut chunked = FrameTracker::new();
            let mut single = FrameTracker::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                chunked.advance(&bytes[from..c]);
                for b in &bytes[from..c] {
                    single.advance(std::slice::from_ref(b));
                }
                prop_assert_eq!(chunked.until_boundary(), single.until_boundary());
                from = c;
            }
        }

        /// Garbage never panics, and the answer is always bounded by a 32-bit length.
        #[test]
        fn garbage_is_harmless(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut t = FrameTracker::new();
            t.advance(&data);
            if let Some(n) = t.until_boundary() {
                prop_assert!(n <= u64::from(u32::MAX));
            }
        }
    }
}

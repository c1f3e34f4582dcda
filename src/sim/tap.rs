//! A wire tap: decodes the peer-wire bytes crossing a simulated link so tests can see which messages
//! were actually exchanged (who choked whom, which piece blocks a node received).

use hyperblow_core::testkit::WireStream;
use hyperblow_core::time::Instant;
use hyperblow_core::wire::{Decoded, Message};

/// Largest frame the tap accepts (bitfields of big torrents included).
const TAP_MAX_FRAME: u32 = 8 * 1024 * 1024;

/// A message seen on a link, reduced to what tests look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TapMessage {
    /// `choke`.
    Choke,
    /// `unchoke`.
    Unchoke,
    /// `interested`.
    Interested,
    /// `not interested`.
    NotInterested,
    /// `have`.
    Have(u32),
    /// `request` of a block.
    Request {
        /// Piece.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
    },
    /// `piece`: a block of data.
    Piece {
        /// Piece.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
        /// Length of the block.
        length: u32,
    },
    /// `cancel`.
    Cancel {
        /// Piece.
        piece: u32,
        /// Offset in the piece.
        begin: u32,
    },
    /// Not a message: the sending node's end of the connection closed (it closed it, or learned that
    /// the other end did). Lets a replay forget per-connection state such as an unchoke.
    Closed,
}

/// One tapped message: when it arrived, from which node to which node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapRecord {
    /// When the sender queued it on the link (the engine's decision time; arrival is later).
    pub at: Instant,
    /// Sending node.
    pub from: usize,
    /// Receiving node.
    pub to: usize,
    /// The simulator's id of the connection (two nodes may hold several connections at once).
    pub conn: u64,
    /// The message.
    pub message: TapMessage,
}

/// A decoder for one direction of one connection.
#[derive(Debug)]
pub(crate) struct Tap {
    stream: WireStream,
}

impl Tap {
    pub(crate) fn new() -> Tap {
        Tap {
            stream: WireStream::new(TAP_MAX_FRAME),
        }
    }

    /// Feeds bytes queued on the link; appends the messages they completed to `out`.
    pub(crate) fn feed(
        &mut self,
        at: Instant,
        conn: u64,
        from: usize,
        to: usize,
        data: &[u8],
        out: &mut Vec<TapRecord>,
    ) {
        // Bytes that are not peer-wire traffic the tap understands end its decoding (the engine's
        // own decoder judges them).
        self.stream.feed(data, |d| {
            let Decoded::Message(m) = d else {
                return;
            };
            let message = match m {
                Message::Choke => TapMessage::Choke,
                Message::Unchoke => TapMessage::Unchoke,
                Message::Interested => TapMessage::Interested,
                Message::NotInterested => TapMessage::NotInterested,
                Message::Have { piece } => TapMessage::Have(piece),
                Message::Request(r) => TapMessage::Request {
                    piece: r.index,
                    begin: r.begin,
                },
                Message::Cancel(r) => TapMessage::Cancel {
                    piece: r.index,
                    begin: r.begin,
                },
                Message::Piece {
                    index,
                    begin,
                    block,
                } => TapMessage::Piece {
                    piece: index,
                    begin,
                    length: block.len() as u32,
                },
                _ => return,
            };
            out.push(TapRecord {
                at,
                from,
                to,
                conn,
                message,
            });
        });
    }
}

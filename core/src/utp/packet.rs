//! The BEP 29 packet: a 20-byte header, an optional chain of extensions, then the payload.
//!
//! ```text
//! 0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! | timestamp_difference_microseconds                             |
//! | wnd_size                                                      |
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! Each extension is `[next extension type][length][length bytes]`; type 0 ends the chain. Extension 1
//! is the selective ack: a bitmask whose bit `i` (least significant bit of each byte first) says that
//! packet `ack_nr + 2 + i` was received. Unknown extensions are skipped. Parsing borrows the payload from
//! the datagram and never allocates; writing appends to a caller-owned buffer.

use std::fmt;

/// The only protocol version BEP 29 defines.
pub const VERSION: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 20;
/// Extension type of the selective ack.
pub const EXT_SELECTIVE_ACK: u8 = 1;
/// Largest selective-ack bitmask we keep or send (256 packets past `ack_nr + 1`). Longer masks from a
/// peer are truncated: the bits past this only describe packets we would not buffer anyway.
pub const MAX_SACK_BYTES: usize = 32;

/// The packet types of BEP 29.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// `ST_DATA`: carries payload.
    Data = 0,
    /// `ST_FIN`: the sender's last packet; its sequence number ends the stream.
    Fin = 1,
    /// `ST_STATE`: an ack (no payload, does not consume a sequence number).
    State = 2,
    /// `ST_RESET`: terminates the connection at once.
    Reset = 3,
    /// `ST_SYN`: opens a connection.
    Syn = 4,
}

impl PacketType {
    fn from_nibble(n: u8) -> Option<PacketType> {
        Some(match n {
            0 => PacketType::Data,
            1 => PacketType::Fin,
            2 => PacketType::State,
            3 => PacketType::Reset,
            4 => PacketType::Syn,
            _ => return None,
        })
    }
}

/// The fixed 20-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the packet is.
    pub ty: PacketType,
    /// The receiver's connection id (for a SYN, the id the initiator will receive on).
    pub connection_id: u16,
    /// Sender's clock in microseconds (wrapping) when the packet was sent.
    pub timestamp_us: u32,
    /// Sender's receive time minus the timestamp of the last packet it received from us.
    pub timestamp_diff_us: u32,
    /// Bytes the sender can still take into its receive buffer.
    pub wnd_size: u32,
    /// Sequence number (wrapping, 16 bits).
    pub seq_nr: u16,
    /// Last sequence number received in order from the other side.
    pub ack_nr: u16,
}

/// A selective-ack bitmask, stored inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SelectiveAck {
    bytes: [u8; MAX_SACK_BYTES],
    len: u8,
}

impl fmt::Debug for SelectiveAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SelectiveAck(")?;
        for b in self.as_bytes() {
            write!(f, "{b:08b}")?;
        }
        write!(f, ")")
    }
}

impl SelectiveAck {
    /// An empty mask of `len` bytes (a multiple of 4 on the wire; callers round up).
    pub fn with_len(len: usize) -> SelectiveAck {
        SelectiveAck {
            bytes: [0; MAX_SACK_BYTES],
            len: len.min(MAX_SACK_BYTES) as u8,
        }
    }

    /// The mask from raw bytes, truncated to [`MAX_SACK_BYTES`].
    pub fn from_bytes(b: &[u8]) -> SelectiveAck {
        let mut s = SelectiveAck::with_len(b.len());
        let n = usize::from(s.len);
        s.bytes[..n].copy_from_slice(&b[..n]);
        s
    }

    /// The mask bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// How many packets the mask describes.
    pub fn bits(&self) -> usize {
        usize::from(self.len) * 8
    }

    /// Whether bit `i` (packet `ack_nr + 2 + i`) is set.
    pub fn get(&self, i: usize) -> bool {
        i < self.bits() && self.bytes[i / 8] & (1 << (i % 8)) != 0
    }

    /// Sets bit `i`; bits past the mask's length are ignored.
    pub fn set(&mut self, i: usize) {
        if i < self.bits() {
            self.bytes[i / 8] |= 1 << (i % 8);
        }
    }
}

/// A parsed packet borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The fixed header.
    pub header: Header,
    /// The selective ack, if the packet carried one.
    pub sack: Option<SelectiveAck>,
    /// Everything after the extensions.
    pub payload: &'a [u8],
}

/// Why a datagram is not a valid uTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the header, or an extension runs past the end.
    #[error("truncated uTP packet")]
    Truncated,
    /// Version other than 1.
    #[error("unsupported uTP version {0}")]
    Version(u8),
    /// Type nibble above 4.
    #[error("unknown uTP packet type {0}")]
    Type(u8),
    /// A selective ack of length zero.
    #[error("malformed selective ack of {0} bytes")]
    BadSack(u8),
}

/// Cheap test for "this datagram could be uTP": long enough, version 1, a known type. The engine uses it
/// to tell uTP from DHT (`d…`) and UDP tracker replies (first byte 0) on a shared socket.
pub fn looks_like_utp(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] & 0x0f == VERSION && datagram[0] >> 4 <= 4
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> Packet<'a> {
    /// Parses one datagram. Never panics and never allocates, whatever the bytes.
    pub fn parse(b: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let version = b[0] & 0x0f;
        if version != VERSION {
            return Err(ParseError::Version(version));
        }
        let ty = PacketType::from_nibble(b[0] >> 4).ok_or(ParseError::Type(b[0] >> 4))?;
        let header = Header {
            ty,
            connection_id: be16(b, 2),
            timestamp_us: be32(b, 4),
            timestamp_diff_us: be32(b, 8),
            wnd_size: be32(b, 12),
            seq_nr: be16(b, 16),
            ack_nr: be16(b, 18),
        };
        let mut next = b[1];
        let mut at = HEADER_LEN;
        let mut sack = None;
        while next != 0 {
            if b.len() < at + 2 {
                return Err(ParseError::Truncated);
            }
            let (ext, len) = (next, b[at + 1]);
            next = b[at];
            let start = at + 2;
            let end = start + usize::from(len);
            if b.len() < end {
                return Err(ParseError::Truncated);
            }
            if ext == EXT_SELECTIVE_ACK {
                // BEP 29 asks for a multiple of 4 bytes, but libtorrent 2.0 sends as few bytes as
                // its bits need (1 or 2): every length but zero is taken.
                if len == 0 {
                    return Err(ParseError::BadSack(len));
                }
                sack = Some(SelectiveAck::from_bytes(&b[start..end]));
            }
            at = end;
        }
        Ok(Packet {
            header,
            sack,
            payload: &b[at..],
        })
    }

    /// Appends the encoded packet to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        write_packet(&self.header, self.sack.as_ref(), self.payload, out);
    }
}

/// Appends header, optional selective ack and payload to `out` (which the caller reuses, so a warm
/// buffer means no allocation).
pub fn write_packet(h: &Header, sack: Option<&SelectiveAck>, payload: &[u8], out: &mut Vec<u8>) {
    write_header(h, sack, out);
    out.extend_from_slice(payload);
}

/// Appends header and optional selective ack to `out`; the payload follows.
pub fn write_header(h: &Header, sack: Option<&SelectiveAck>, out: &mut Vec<u8>) {
    out.push(((h.ty as u8) << 4) | VERSION);
    out.push(if sack.is_some() { EXT_SELECTIVE_ACK } else { 0 });
    out.extend_from_slice(&h.connection_id.to_be_bytes());
    out.extend_from_slice(&h.timestamp_us.to_be_bytes());
    out.extend_from_slice(&h.timestamp_diff_us.to_be_bytes());
    out.extend_from_slice(&h.wnd_size.to_be_bytes());
    out.extend_from_slice(&h.seq_nr.to_be_bytes());
    out.extend_from_slice(&h.ack_nr.to_be_bytes());
    if let Some(s) = sack {
        out.push(0);
        out.push(s.len);
        out.extend_from_slice(s.as_bytes());
    }
}

/// `a < b` in 16-bit wrapping sequence space (b is less than half the space ahead of a).
pub fn seq_lt(a: u16, b: u16) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000
}

/// `a <= b` in 16-bit wrapping sequence space.
pub fn seq_le(a: u16, b: u16) -> bool {
    a == b || seq_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Header {
        Header {
            ty: PacketType::Data,
            connection_id: 0xbeef,
            timestamp_us: 0x0102_0304,
            timestamp_diff_us: 0x0506_0708,
            wnd_size: 0x0009_0000,
            seq_nr: 0xfffe,
            ack_nr: 7,
        }
    }

    #[test]
    fn header_layout_is_bep29() {
        let mut out = Vec::new();
        write_packet(&sample(), None, b"xy", &mut out);
        assert_eq!(
            out,
            [
                0x01, 0, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 0, 0, 0xff, 0xfe, 0, 7, b'x',
                b'y'
            ]
        );
        let syn = Header {
            ty: PacketType::Syn,
            ..sample()
        };
        out.clear();
        write_header(&syn, None, &mut out);
        assert_eq!(out[0], 0x41);
        assert!(looks_like_utp(&out));
        assert!(!looks_like_utp(
            b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe"
        ));
        assert!(!looks_like_utp(&[0u8; 20]));
    }

    #[test]
    fn sack_bits_are_lsb_first() {
        let mut s = SelectiveAck::with_len(4);
        s.set(0);
        s.set(9);
        s.set(31);
        s.set(32); // past the mask: ignored
        assert_eq!(s.as_bytes(), &[0x01, 0x02, 0, 0x80]);
        assert!(s.get(0) && s.get(9) && s.get(31) && !s.get(1) && !s.get(32));
        let mut out = Vec::new();
        write_packet(&sample(), Some(&s), b"p", &mut out);
        assert_eq!(&out[20..26], &[0, 4, 0x01, 0x02, 0, 0x80]);
        let p = Packet::parse(&out).unwrap();
        assert_eq!(p.sack, Some(s));
        assert_eq!(p.payload, b"p");
    }

    #[test]
    fn rejects_bad_packets() {
        let mut out = Vec::new();
        write_header(&sample(), None, &mut out);
        assert_eq!(Packet::parse(&out[..19]), Err(ParseError::Truncated));
        let mut v = out.clone();
        v[0] = 0x02;
        assert_eq!(Packet::parse(&v), Err(ParseError::Version(2)));
        v[0] = 0x51;
        assert_eq!(Packet::parse(&v), Err(ParseError::Type(5)));
        // Extension header cut short, extension body cut short, zero-length sack.
        let mut v = out.clone();
        v[1] = 1;
        assert_eq!(Packet::parse(&v), Err(ParseError::Truncated));
        v.extend_from_slice(&[0, 4, 1]);
        assert_eq!(Packet::parse(&v), Err(ParseError::Truncated));
        let mut v = out.clone();
        v[1] = 1;
        v.extend_from_slice(&[0, 0]);
        assert_eq!(Packet::parse(&v), Err(ParseError::BadSack(0)));
        // A one-byte sack, as libtorrent 2.0 sends them (not a multiple of 4), is taken.
        let mut v = out.clone();
        v[1] = 1;
        v.extend_from_slice(&[0, 1, 0b0000_0101]);
        let p = Packet::parse(&v).expect("a one-byte sack");
        assert_eq!(
            p.sack.map(|s| s.as_bytes().to_vec()),
            Some(vec![0b0000_0101])
        );
        assert!(p.payload.is_empty());
        // Unknown extensions are skipped.
        let mut v = out.clone();
        v[1] = 3;
        v.extend_from_slice(&[1, 2, 9, 9, 0, 4, 0xff, 0, 0, 0, b'z']);
        let p = Packet::parse(&v).unwrap();
        assert!(p.sack.unwrap().get(7) && !p.sack.unwrap().get(8));
        assert_eq!(p.payload, b"z");
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_lt(1, 2) && !seq_lt(2, 1) && !seq_lt(3, 3));
        assert!(seq_lt(0xffff, 0) && seq_lt(0xfff0, 5) && !seq_lt(5, 0xfff0));
        assert!(seq_le(7, 7) && seq_le(0xffff, 1));
    }

    fn any_type() -> impl Strategy<Value = PacketType> {
        prop_oneof![
            Just(PacketType::Data),
            Just(PacketType::Fin),
            Just(PacketType::State),
            Just(PacketType::Reset),
            Just(PacketType::Syn),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            ty in any_type(),
            ids in any::<(u16, u32, u32, u32, u16, u16)>(),
            sack in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=8usize)),
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let h = Header {
                ty,
                connection_id: ids.0,
                timestamp_us: ids.1,
                timestamp_diff_us: ids.2,
                wnd_size: ids.3,
                seq_nr: ids.4,
                ack_nr: ids.5,
            };
            let sack = sack.map(|words| {
                let mut b = words.clone();
                b.resize(words.len() * 4, 0xa5);
                SelectiveAck::from_bytes(&b)
            });
            let mut out = Vec::new();
            write_packet(&h, sack.as_ref(), &payload, &mut out);
            prop_assert!(looks_like_utp(&out));
            let p = Packet::parse(&out).unwrap();
            prop_assert_eq!(p.header, h);
            prop_assert_eq!(p.sack, sack);
            prop_assert_eq!(p.payload, &payload[..]);
            let mut again = Vec::new();
            p.write(&mut again);
            prop_assert_eq!(again, out);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = Packet::parse(&bytes) {
                prop_assert!(p.payload.len() + HEADER_LEN <= bytes.len());
            }
        }

        #[test]
        fn header_shaped_garbage_never_panics(
            first in prop_oneof![Just(0x01u8), Just(0x11), Just(0x21), Just(0x31), Just(0x41)],
            ext in 0u8..4,
            rest in proptest::collection::vec(any::<u8>(), 18..120),
        ) {
            let mut b = vec![first, ext];
            b.extend_from_slice(&rest);
            if let Ok(p) = Packet::parse(&b) {
                prop_assert!(p.payload.len() + HEADER_LEN <= b.len());
                if let Some(s) = p.sack {
                    prop_assert!(s.as_bytes().len() <= MAX_SACK_BYTES);
                }
            }
        }
    }
}

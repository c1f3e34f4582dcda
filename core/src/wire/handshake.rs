//! The 68-byte BitTorrent handshake (BEP 3) and its reserved-bit extension flags (BEP 4, 6, 10, 5).

use bitflags::bitflags;
use bytes::{BufMut, BytesMut};
use nom::bytes::complete::take;
use nom::number::complete::be_u64;
use nom::sequence::tuple;
use nom::IResult;

use crate::types::{InfoHash, PeerId};

use super::DecodeError;

/// The protocol name every BitTorrent v1 handshake starts with (after its length byte, 19).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Length of a handshake on the wire: 1 + 19 + 8 reserved + 20 info-hash + 20 peer id.
pub const HANDSHAKE_LEN: usize = 68;

bitflags! {
    /// The 8 reserved handshake bytes, read as one big-endian `u64` so that `reserved[0]` is the most
    /// significant byte and `reserved[7]` the least. Each side advertises the extensions it supports; an
    /// extension is in use only if both sides set its bit. Bits we do not know are kept
    /// ([`Reserved::from_bits_retain`]) so that logging and stats can show what the peer advertised.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Reserved: u64 {
        /// BEP 10 extension protocol (LTEP): `reserved[5] & 0x10`.
        const EXTENSION_PROTOCOL = 0x10 << 16;
        /// BEP 6 fast extension (suggest, have all/none, reject, allowed fast): `reserved[7] & 0x04`.
        const FAST = 0x04;
        /// BEP 5 DHT: the peer accepts `port` messages and runs a DHT node: `reserved[7] & 0x01`.
        const DHT = 0x01;
    }
}

impl Reserved {
    /// Reads the 8 reserved bytes as they appear on the wire, keeping unknown bits.
    pub fn from_bytes(bytes: [u8; 8]) -> Reserved {
        Reserved::from_bits_retain(u64::from_be_bytes(bytes))
    }

    /// The 8 reserved bytes in wire order.
    pub fn to_bytes(self) -> [u8; 8] {
        self.bits().to_be_bytes()
    }
}

/// A parsed or to-be-sent handshake: which extensions the sender supports, which torrent it wants and who
/// it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// Extension bits advertised by the sender.
    pub reserved: Reserved,
    /// The torrent the connection is for.
    pub info_hash: InfoHash,
    /// The sender's peer id.
    pub peer_id: PeerId,
}

/// nom (complete) parser for the whole handshake after its checked 20-byte prefix: reserved bits,
/// info-hash, peer id.
fn handshake_fields(input: &[u8]) -> IResult<&[u8], Handshake> {
    let (rest, (_, reserved, info_hash, peer_id)) =
        tuple((take(20usize), be_u64, take(20usize), take(20usize)))(input)?;
    Ok((
        rest,
        Handshake {
            reserved: Reserved::from_bits_retain(reserved),
            info_hash: InfoHash(array20(info_hash)),
            peer_id: PeerId(array20(peer_id)),
        },
    ))
}

/// Copies a 20-byte slice into an array (the parser guarantees the length; a short slice yields zeros
/// rather than a panic, and cannot happen).
fn array20(slice: &[u8]) -> [u8; 20] {
    let mut out = [0u8; 20];
    if let Some(src) = slice.get(..20) {
        out.copy_from_slice(src);
    }
    out
}

impl Handshake {
    /// A handshake for `info_hash` from `peer_id` advertising `reserved`.
    pub fn new(info_hash: InfoHash, peer_id: PeerId, reserved: Reserved) -> Handshake {
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// Appends the 68 wire bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(HANDSHAKE_LEN);
        dst.put_u8(PROTOCOL.len() as u8);
        dst.put_slice(PROTOCOL);
        dst.put_u64(self.reserved.bits());
        dst.put_slice(&self.info_hash.0);
        dst.put_slice(&self.peer_id.0);
    }

    /// The 68 wire bytes as an array (for a driver that writes the handshake on its own).
    pub fn to_bytes(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        let mut buf = BytesMut::with_capacity(HANDSHAKE_LEN);
        self.encode(&mut buf);
        out.copy_from_slice(&buf);
        out
    }

    /// Checks a handshake prefix as soon as its first bytes are known, so that a peer speaking another
    /// protocol (or encrypting, BEP 8 / MSE) is refused after one byte instead of after 68.
    pub(crate) fn check_prefix(prefix: &[u8]) -> Result<(), DecodeError> {
        if let Some(&first) = prefix.first() {
            if usize::from(first) != PROTOCOL.len() {
                return Err(DecodeError::BadProtocolLength(first));
            }
        }
        let got = prefix.get(1..).unwrap_or(&[]);
        let n = got.len().min(PROTOCOL.len());
        if got.get(..n) != PROTOCOL.get(..n) {
            return Err(DecodeError::BadProtocolName {
                name: String::from_utf8_lossy(got.get(..n).unwrap_or(&[])).into_owned(),
            });
        }
        Ok(())
    }

    /// Parses exactly 68 handshake bytes. Errors name the field that was wrong.
    pub fn parse(bytes: &[u8]) -> Result<Handshake, DecodeError> {
        if bytes.len() != HANDSHAKE_LEN {
            return Err(DecodeError::HandshakeLength(bytes.len()));
        }
        Self::check_prefix(bytes)?;
        handshake_fields(bytes)
            .map(|(_, hs)| hs)
            .map_err(|_| DecodeError::HandshakeLength(bytes.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handshake {
        let mut ih = [0u8; 20];
        for (i, b) in ih.iter_mut().enumerate() {
            *b = i as u8;
        }
        Handshake::new(
            InfoHash(ih),
            PeerId(*b"-HB0100-abcdefghijkl"),
            Reserved::EXTENSION_PROTOCOL | Reserved::FAST | Reserved::DHT,
        )
    }

    #[test]
    fn reserved_bits_sit_where_the_beps_say() {
        // BEP 10: reserved[5] & 0x10; BEP 6: reserved[7] & 0x04; BEP 5: reserved[7] & 0x01.
        assert_eq!(
            Reserved::EXTENSION_PROTOCOL.to_bytes(),
            [0, 0, 0, 0, 0, 0x10, 0, 0]
        );
        assert_eq!(Reserved::FAST.to_bytes(), [0, 0, 0, 0, 0, 0, 0, 0x04]);
        assert_eq!(Reserved::DHT.to_bytes(), [0, 0, 0, 0, 0, 0, 0, 0x01]);
        // libtorrent's usual reserved bytes: LTEP + fast + DHT.
        let r = Reserved::from_bytes([0, 0, 0, 0, 0, 0x10, 0, 0x05]);
        assert!(r.contains(Reserved::EXTENSION_PROTOCOL | Reserved::FAST | Reserved::DHT));
    }

    #[test]
    fn unknown_reserved_bits_are_preserved() {
        // Azureus messaging (reserved[0] & 0x80) and BEP 4's hybrid-upgrade bit (reserved[7] & 0x10).
        let raw = [0x80, 0, 0, 0, 0, 0x10, 0, 0x14];
        let r = Reserved::from_bytes(raw);
        assert!(r.contains(Reserved::EXTENSION_PROTOCOL | Reserved::FAST));
        assert!(!r.contains(Reserved::DHT));
        assert_eq!(r.to_bytes(), raw);
    }

    #[test]
    fn encodes_the_68_byte_layout() {
        let h = sample();
        let bytes = h.to_bytes();
        assert_eq!(bytes[0], 19);
        assert_eq!(&bytes[1..20], b"BitTorrent protocol");
        assert_eq!(&bytes[20..28], &[0, 0, 0, 0, 0, 0x10, 0, 0x05]);
        assert_eq!(&bytes[28..48], &h.info_hash.0);
        assert_eq!(&bytes[48..68], b"-HB0100-abcdefghijkl");
        assert_eq!(Handshake::parse(&bytes), Ok(h));
    }

    #[test]
    fn rejects_wrong_protocol_and_length() {
        let mut bytes = sample().to_bytes();
        assert_eq!(
            Handshake::parse(&bytes[..67]),
            Err(DecodeError::HandshakeLength(67))
        );
        bytes[0] = 18;
        assert_eq!(
            Handshake::parse(&bytes),
            Err(DecodeError::BadProtocolLength(18))
        );
        bytes[0] = 19;
        bytes[1] = b'b';
        assert!(matches!(
            Handshake::parse(&bytes),
            Err(DecodeError::BadProtocolName { .. })
        ));
    }
}

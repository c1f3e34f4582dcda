//! A fixed-length set of piece indexes, laid out exactly as the BitTorrent `bitfield` message carries it.
//!
//! BEP 3 sends which pieces a peer has as a byte string in which the *high* bit of the first byte stands for
//! piece 0, the next bit for piece 1, and so on; the spare bits at the end of the last byte must be zero.
//! [`Bitfield`] stores its bits in that very layout, so [`Bitfield::as_bytes`] is the payload to send and
//! [`Bitfield::from_wire`] only has to validate, never to reshuffle bits.
//!
//! Piece indexes are `u32`, like the indexes in `have`, `request` and `piece` messages. Every accessor is
//! total: an index at or past [`Bitfield::len`] reads as absent and is never set, so a bad index that came
//! from a peer cannot panic here (the peer session is still expected to reject such a message).

use std::fmt;

use thiserror::Error;

/// Why a received bitfield payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BitfieldError {
    /// The payload length is not `ceil(pieces / 8)` bytes.
    #[error(
        "bitfield is {got} bytes long but a torrent of {pieces} pieces needs exactly {expected}"
    )]
    WrongLength {
        /// The number of pieces in the torrent.
        pieces: u32,
        /// The byte length the piece count calls for.
        expected: usize,
        /// The byte length received.
        got: usize,
    },
    /// A spare bit after the last piece is set (BEP 3 requires them to be zero).
    #[error(
        "bitfield spare bit set in byte {byte_offset} (value {byte:#04x}): only the first {pieces} bits may be set"
    )]
    SpareBitsSet {
        /// The number of pieces in the torrent.
        pieces: u32,
        /// Offset of the offending (last) byte within the payload.
        byte_offset: usize,
        /// The value of that byte.
        byte: u8,
    },
}

/// A set of piece indexes `0..len`, stored MSB-first as on the wire, with a cached count of set bits.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    ones: u32,
}

/// Number of bytes needed for `len` bits.
fn byte_len(len: u32) -> usize {
    (len as usize).div_ceil(8)
}

/// The mask of the bits of the last byte that stand for real pieces (`0xff` if the last byte is whole).
fn last_byte_mask(len: u32) -> u8 {
    match len % 8 {
        0 => 0xff,
        r => 0xffu8 << (8 - r),
    }
}

impl Bitfield {
    /// An empty set over `len` pieces (we have nothing; a peer that sent `have none`).
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            bytes: vec![0; byte_len(len)],
            len,
            ones: 0,
        }
    }

    /// A full set over `len` pieces (a seed; a peer that sent `have all`). Spare bits stay zero.
    pub fn full(len: u32) -> Bitfield {
        let mut bytes = vec![0xff; byte_len(len)];
        if let Some(last) = bytes.last_mut() {
            *last &= last_byte_mask(len);
        }
        Bitfield {
            bytes,
            len,
            ones: len,
        }
    }

    /// Validates and adopts a `bitfield` message payload for a torrent of `pieces` pieces.
    ///
    /// The payload must be exactly `ceil(pieces / 8)` bytes long and its spare bits must be zero.
    pub fn from_wire(payload: &[u8], pieces: u32) -> Result<Bitfield, BitfieldError> {
        let expected = byte_len(pieces);
        if payload.len() != expected {
            return Err(BitfieldError::WrongLength {
                pieces,
                expected,
                got: payload.len(),
            });
        }
        if let Some(&last) = payload.last() {
            if last & !last_byte_mask(pieces) != 0 {
                return Err(BitfieldError::SpareBitsSet {
                    pieces,
                    byte_offset: expected - 1,
                    byte: last,
                });
            }
        }
        let ones = payload.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield {
            bytes: payload.to_vec(),
            len: pieces,
            ones,
        })
    }

    /// The wire form, ready to be the payload of a `bitfield` message.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The number of pieces this set ranges over (not the number present: see [`Bitfield::count_ones`]).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the set ranges over zero pieces (an empty torrent), as opposed to [`Bitfield::none`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `index` is in the set; `false` for an index out of range.
    pub fn get(&self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let byte = self.bytes.get((index / 8) as usize).copied().unwrap_or(0);
        byte & (0x80 >> (index % 8)) != 0
    }

    /// Adds piece `index`. Returns `true` if it was absent before (so callers can keep counts), `false` if
    /// it was already present or the index is out of range (in which case nothing changes).
    pub fn set(&mut self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let mask = 0x80u8 >> (index % 8);
        match self.bytes.get_mut((index / 8) as usize) {
            Some(b) if *b & mask == 0 => {
                *b |= mask;
                self.ones += 1;
                true
            }
            _ => false,
        }
    }

    /// Removes piece `index`. Returns `true` if it was present before, `false` otherwise (including an
    /// index out of range).
    pub fn clear(&mut self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        let mask = 0x80u8 >> (index % 8);
        match self.bytes.get_mut((index / 8) as usize) {
            Some(b) if *b & mask != 0 => {
                *b &= !mask;
                self.ones -= 1;
                true
            }
            _ => false,
        }
    }

    /// Sets or clears piece `index` according to `value`; returns whether anything changed.
    pub fn assign(&mut self, index: u32, value: bool) -> bool {
        if value {
            self.set(index)
        } else {
            self.clear(index)
        }
    }

    /// How many pieces are present (kept up to date, so this is O(1)).
    pub fn count_ones(&self) -> u32 {
        self.ones
    }

    /// How many pieces are absent.
    pub fn count_zeros(&self) -> u32 {
        self.len - self.ones
    }

    /// Whether every piece is present (true for a zero-length set).
    pub fn all(&self) -> bool {
        self.ones == self.len
    }

    /// Whether no piece is present.
    pub fn none(&self) -> bool {
        self.ones == 0
    }

    /// The present piece indexes in increasing order; skips empty bytes, so sparse sets iterate fast.
    pub fn iter_ones(&self) -> Ones<'_> {
        Ones {
            bytes: &self.bytes,
            byte_index: 0,
            current: self.bytes.first().copied().unwrap_or(0),
        }
    }

    /// Whether the two sets share a piece; sets of different lengths are compared over the shorter one.
    ///
    /// With `self` = a peer's pieces and `other` = the pieces we still need, this is "is the peer
    /// interesting to us".
    pub fn intersects(&self, other: &Bitfield) -> bool {
        self.bytes.iter().zip(&other.bytes).any(|(a, b)| a & b != 0)
    }

    /// Whether some piece is in `self` but not in `other` (e.g. the peer has a piece we lack).
    /// Pieces past `other`'s length count as absent from `other`.
    pub fn has_any_not_in(&self, other: &Bitfield) -> bool {
        self.bytes
            .iter()
            .enumerate()
            .any(|(i, a)| a & !other.bytes.get(i).copied().unwrap_or(0) != 0)
    }

    /// How many pieces are in both sets.
    pub fn count_and(&self, other: &Bitfield) -> u32 {
        self.bytes
            .iter()
            .zip(&other.bytes)
            .map(|(a, b)| (a & b).count_ones())
            .sum()
    }

    /// Keeps only the pieces also in `other` (set intersection, in place).
    pub fn and_with(&mut self, other: &Bitfield) {
        for (i, a) in self.bytes.iter_mut().enumerate() {
            *a &= other.bytes.get(i).copied().unwrap_or(0);
        }
        self.recount();
    }

    /// Adds every piece of `other` that is within this set's range (set union, in place).
    pub fn or_with(&mut self, other: &Bitfield) {
        for (a, b) in self.bytes.iter_mut().zip(&other.bytes) {
            *a |= b;
        }
        if let Some(last) = self.bytes.last_mut() {
            *last &= last_byte_mask(self.len);
        }
        self.recount();
    }

    /// Removes every piece that is in `other` (set difference, in place).
    pub fn and_not_with(&mut self, other: &Bitfield) {
        for (a, b) in self.bytes.iter_mut().zip(&other.bytes) {
            *a &= !b;
        }
        self.recount();
    }

    fn recount(&mut self) {
        self.ones = self.bytes.iter().map(|b| b.count_ones()).sum();
    }
}

impl fmt::Debug for Bitfield {
    /// Shows the length, the count, and the bits as `0`/`1` for short sets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{}", self.ones, self.len)?;
        if self.len <= 64 {
            f.write_str(" ")?;
            for i in 0..self.len {
                f.write_str(if self.get(i) { "1" } else { "0" })?;
            }
        }
        f.write_str(")")
    }
}

/// Iterator over the present piece indexes of a [`Bitfield`], in increasing order.
#[derive(Debug, Clone)]
pub struct Ones<'a> {
    bytes: &'a [u8],
    byte_index: usize,
    /// The not-yet-yielded bits of `bytes[byte_index]`.
    current: u8,
}

impl Iterator for Ones<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            if self.current != 0 {
                let bit = self.current.leading_zeros();
                self.current &= !(0x80u8 >> bit);
                return Some(self.byte_index as u32 * 8 + bit);
            }
            self.byte_index += 1;
            self.current = *self.bytes.get(self.byte_index)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn msb_first_layout() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0));
        assert!(b.set(9));
        assert!(!b.set(9));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count_ones(), 2);
        assert!(b.get(0) && b.get(9) && !b.get(1));
        assert!(b.clear(0));
        assert!(!b.clear(0));
        assert_eq!(b.as_bytes(), &[0x00, 0x40]);
        assert_eq!(b.count_ones(), 1);
    }

    #[test]
    fn out_of_range_is_absent_and_ignored() {
        let mut b = Bitfield::new(10);
        assert!(!b.set(10));
        assert!(!b.set(u32::MAX));
        assert!(!b.get(10));
        assert!(!b.clear(15));
        assert_eq!(b.as_bytes(), &[0, 0]);
        assert!(b.none());
    }

    #[test]
    fn full_keeps_spare_bits_zero() {
        let b = Bitfield::full(10);
        assert_eq!(b.as_bytes(), &[0xff, 0xc0]);
        assert!(b.all());
        assert_eq!(b.count_zeros(), 0);
        assert_eq!(Bitfield::full(16).as_bytes(), &[0xff, 0xff]);
        assert!(Bitfield::full(0).all() && Bitfield::full(0).is_empty());
        assert_eq!(Bitfield::from_wire(b.as_bytes(), 10), Ok(b));
    }

    #[test]
    fn wire_length_must_match_piece_count() {
        assert_eq!(
            Bitfield::from_wire(&[0xff], 10),
            Err(BitfieldError::WrongLength {
                pieces: 10,
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            Bitfield::from_wire(&[0, 0, 0], 16),
            Err(BitfieldError::WrongLength {
                pieces: 16,
                expected: 2,
                got: 3
            })
        );
        assert!(Bitfield::from_wire(&[], 0).is_ok());
        assert!(Bitfield::from_wire(&[0], 0).is_err());
        let msg = Bitfield::from_wire(&[0xff], 10).unwrap_err().to_string();
        assert!(msg.contains("1 bytes") && msg.contains("10 pieces") && msg.contains("exactly 2"));
    }

    #[test]
    fn spare_bits_must_be_zero() {
        // 10 pieces: the low 6 bits of byte 1 are spare.
        assert_eq!(
            Bitfield::from_wire(&[0xff, 0xc1], 10),
            Err(BitfieldError::SpareBitsSet {
                pieces: 10,
                byte_offset: 1,
                byte: 0xc1
            })
        );
        assert!(Bitfield::from_wire(&[0xff, 0xe0], 10).is_err());
        let ok = Bitfield::from_wire(&[0x01, 0xc0], 10).unwrap();
        assert_eq!(ok.iter_ones().collect::<Vec<_>>(), vec![7, 8, 9]);
        let msg = Bitfield::from_wire(&[0xff, 0xc1], 10)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("byte 1") && msg.contains("0xc1"));
    }

    #[test]
    fn set_operations() {
        let mut peer = Bitfield::new(20);
        let mut need = Bitfield::new(20);
        for i in [1, 5, 17] {
            peer.set(i);
        }
        for i in [2, 6, 18] {
            need.set(i);
        }
        assert!(!peer.intersects(&need));
        need.set(17);
        assert!(peer.intersects(&need));
        assert_eq!(peer.count_and(&need), 1);
        assert!(peer.has_any_not_in(&need));
        let mut both = peer.clone();
        both.and_with(&need);
        assert_eq!(both.iter_ones().collect::<Vec<_>>(), vec![17]);
        assert_eq!(both.count_ones(), 1);
        assert!(!both.has_any_not_in(&need));
        let mut union = peer.clone();
        union.or_with(&need);
        assert_eq!(
            union.iter_ones().collect::<Vec<_>>(),
            vec![1, 2, 5, 6, 17, 18]
        );
        assert_eq!(union.count_ones(), 6);
        union.and_not_with(&peer);
        assert_eq!(union.iter_ones().collect::<Vec<_>>(), vec![2, 6, 18]);
        assert_eq!(union.count_ones(), 3);
    }

    #[test]
    fn or_with_longer_set_never_sets_spare_bits() {
        let mut short = Bitfield::new(10);
        short.or_with(&Bitfield::full(16));
        assert_eq!(short.as_bytes(), &[0xff, 0xc0]);
        assert!(short.all());
    }

    proptest! {
        #[test]
        fn wire_round_trip_and_iteration(bits in proptest::collection::vec(any::<bool>(), 0..200)) {
            let n = bits.len() as u32;
            let mut b = Bitfield::new(n);
            for (i, &v) in bits.iter().enumerate() {
                b.assign(i as u32, v);
            }
            let expect: Vec<u32> = (0..n).filter(|&i| bits[i as usize]).collect();
            prop_assert_eq!(b.iter_ones().collect::<Vec<_>>(), expect.clone());
            prop_assert_eq!(b.count_ones() as usize, expect.len());
            let back = Bitfield::from_wire(b.as_bytes(), n).unwrap();
            prop_assert_eq!(back, b);
        }

        #[test]
        fn arbitrary_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..40), n in 0u32..400) {
            if let Ok(b) = Bitfield::from_wire(&payload, n) {
                prop_assert_eq!(b.as_bytes(), &payload[..]);
                prop_assert!(b.iter_ones().all(|i| i < n));
                prop_assert_eq!(b.iter_ones().count() as u32, b.count_ones());
            }
        }
    }
}

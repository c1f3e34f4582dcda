//! Small identifier types shared by every protocol in the core.

use std::fmt;

use crate::rng::{CoreRng, RngExt};

/// Formats bytes as lowercase hex.
pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    f.write_str(&data_encoding::HEXLOWER.encode(bytes))
}

/// Decodes exactly 40 hex digits (either case) into 20 bytes.
fn decode_hex20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .ok()?;
    <[u8; 20]>::try_from(bytes.as_slice()).ok()
}

/// The SHA-1 of a torrent's bencoded `info` dictionary: the torrent's identity everywhere on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// Parses 40 hex digits, as printed by every client and used in `xt=urn:btih:` links.
    pub fn from_hex(s: &str) -> Option<InfoHash> {
        decode_hex20(s).map(InfoHash)
    }

    /// The 40-digit lowercase hex form.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The raw 20 bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

/// A peer's 20-byte identifier, sent in the handshake and to trackers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// The BEP 20 (Azureus-style) prefix that names this client and its version: `-HB0100-`.
    pub const PREFIX: &'static [u8; 8] = b"-HB0100-";

    /// A fresh peer id for one session: [`PeerId::PREFIX`] followed by 12 random printable characters
    /// (printable so that trackers and logs that treat it as text do not mangle it).
    pub fn generate(rng: &mut CoreRng) -> PeerId {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(Self::PREFIX);
        for b in &mut id[8..] {
            *b = ALPHABET[rng.random_range(0..ALPHABET.len())];
        }
        PeerId(id)
    }

    /// The raw 20 bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Display for PeerId {
    /// Printable ids show as text (with non-printable bytes escaped), the way clients identify themselves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;

    #[test]
    fn info_hash_hex_round_trip() {
        let hex = "0123456789abcdefABCDEF0123456789abcdef01";
        let ih = InfoHash::from_hex(hex).expect("valid hex");
        assert_eq!(ih.to_hex(), hex.to_ascii_lowercase());
        assert_eq!(InfoHash::from_hex(&hex[..39]), None);
        assert_eq!(
            InfoHash::from_hex("zz23456789abcdefABCDEF0123456789abcdef01"),
            None
        );
    }

    #[test]
    fn peer_id_follows_bep20_and_is_fresh() {
        let mut rng = seeded(1);
        let a = PeerId::generate(&mut rng);
        let b = PeerId::generate(&mut rng);
        assert_eq!(&a.0[..8], b"-HB0100-");
        assert!(a.0.iter().all(u8::is_ascii_graphic));
        assert_ne!(a, b);
    }
}

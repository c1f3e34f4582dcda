//! Message Stream Encryption / Protocol Encryption (MSE/PE): the "obfuscation" handshake that libtorrent,
//! qBittorrent, Transmission, Deluge and aria2 speak, sans-IO.
//!
//! The exchange (A dials, B accepts; S is the Diffie-Hellman secret, SKEY the torrent's info-hash):
//!
//! 1. A → B: `Ya`, `PadA`
//! 2. B → A: `Yb`, `PadB`
//! 3. A → B: `HASH('req1', S)`, `HASH('req2', SKEY) xor HASH('req3', S)`,
//!    `ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA))`, `ENCRYPT(IA)`
//! 4. B → A: `ENCRYPT(VC, crypto_select, len(PadD), PadD)`, then B's payload stream
//! 5. A → B: A's payload stream
//!
//! `Y` are 768-bit DH public keys (96 bytes, big-endian) with generator 2 and 160-bit private keys; pads
//! are 0 to 512 bytes; `VC` is 8 zero bytes; `ENCRYPT` is RC4 keyed with `HASH('keyA', S, SKEY)` for what
//! A sends and `HASH('keyB', S, SKEY)` for what B sends, with the first 1,024 keystream bytes discarded.
//! The initial payload `IA` carries A's BitTorrent handshake. After the handshake the payload stream is
//! either RC4 (continuing the same keystreams) or plaintext, as `crypto_select` says.
//!
//! - [`Handshake`] runs either side and ends in an [`Established`] holding a [`Transform`]: the layer that
//!   sits between socket bytes and the peer wire decoder (decrypting in place in the read buffer,
//!   encrypting into the send buffer), so the peer session does not change.
//! - [`detect`] tells an incoming MSE handshake from a plain BitTorrent one by its first bytes.
//! - [`Policy`] is the session's setting: `prefer`, `require` or `disable`.
//!
//! Both synchronisation searches are bounded as the specification says: B must find `HASH('req1', S)`
//! ending within the first 628 bytes it receives (96 + 512 + 20), A must find `ENCRYPT(VC)` ending within
//! the first 616 (96 + 512 + 8; libtorrent allows the same 512 bytes of `PadB` before it). A handshake that
//! does not synchronise within those bounds, or does not finish before its deadline, fails with an
//! [`MseError`]; nothing a peer sends can make it buffer more than a few hundred bytes.

mod cipher;
mod dh;
mod handshake;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use sha1::{Digest, Sha1};

use crate::types::InfoHash;

pub use cipher::Transform;
pub use handshake::{Established, Handshake, NoSkeys, Req2Map, SkeyLookup, DEFAULT_TIMEOUT};

/// Length of a Diffie-Hellman public key on the wire (768 bits).
pub const PUBLIC_KEY_LEN: usize = 96;
/// Longest padding (`PadA` … `PadD`) the specification allows.
pub const MAX_PAD_LEN: usize = 512;
/// Length of the verification constant (8 zero bytes).
pub const VC_LEN: usize = 8;
/// B gives up unless `HASH('req1', S)` ends within this many bytes of the stream's start (96 + 512 + 20).
pub const REQ1_SYNC_BOUND: usize = PUBLIC_KEY_LEN + MAX_PAD_LEN + 20;
/// A gives up unless `ENCRYPT(VC)` ends within this many bytes of the stream's start (96 + 512 + 8).
pub const VC_SYNC_BOUND: usize = PUBLIC_KEY_LEN + MAX_PAD_LEN + VC_LEN;
/// `crypto_provide` / `crypto_select` bit: the payload stream stays plaintext after the handshake.
pub const CRYPTO_PLAINTEXT: u32 = 0x01;
/// `crypto_provide` / `crypto_select` bit: the payload stream is RC4-encrypted.
pub const CRYPTO_RC4: u32 = 0x02;

/// How a session uses encryption, for connections in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Dial with MSE offering plaintext and RC4 (and fall back to a plain handshake for a peer that does
    /// not answer it); accept both kinds of incoming connection; when a peer offers both methods select
    /// plaintext, so that the common case costs nothing after the handshake.
    #[default]
    Prefer,
    /// Only RC4: dial with MSE offering RC4 alone, select RC4 alone, refuse plain handshakes both ways.
    Require,
    /// No MSE at all: dial with a plain BitTorrent handshake and refuse incoming MSE handshakes.
    Disable,
}

impl Policy {
    /// The name used on the command line and in settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Prefer => "prefer",
            Policy::Require => "require",
            Policy::Disable => "disable",
        }
    }

    /// The `crypto_provide` bits we offer (and accept) under this policy; 0 for [`Policy::Disable`].
    pub fn allowed_methods(self) -> u32 {
        match self {
            Policy::Prefer => CRYPTO_PLAINTEXT | CRYPTO_RC4,
            Policy::Require => CRYPTO_RC4,
            Policy::Disable => 0,
        }
    }

    /// Whether outgoing connections open with the MSE handshake (rather than a plain one).
    pub fn dials_encrypted(self) -> bool {
        self != Policy::Disable
    }

    /// Whether an incoming connection of the given kind is accepted.
    pub fn accepts(self, kind: Detection) -> bool {
        match kind {
            Detection::Plain => self != Policy::Require,
            Detection::Encrypted => self != Policy::Disable,
            Detection::NeedMore => true,
        }
    }

    /// Whether this session advertises encryption support to other peers (PEX flag 0x01, BEP 10 `e`).
    pub fn advertises(self) -> bool {
        self != Policy::Disable
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Policy`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown encryption policy {0:?} (expected prefer, require or disable)")]
pub struct ParsePolicyError(pub String);

impl FromStr for Policy {
    type Err = ParsePolicyError;

    fn from_str(s: &str) -> Result<Policy, ParsePolicyError> {
        match s {
            "prefer" => Ok(Policy::Prefer),
            "require" => Ok(Policy::Require),
            "disable" => Ok(Policy::Disable),
            other => Err(ParsePolicyError(other.to_string())),
        }
    }
}

/// The payload method a handshake settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Crypto {
    /// Only the handshake (and `IA`) was encrypted; the payload stream is plaintext.
    Plaintext,
    /// The whole payload stream is RC4.
    Rc4,
}

impl Crypto {
    /// The `crypto_select` bit of this method.
    pub fn bit(self) -> u32 {
        match self {
            Crypto::Plaintext => CRYPTO_PLAINTEXT,
            Crypto::Rc4 => CRYPTO_RC4,
        }
    }
}

/// What the first bytes of an incoming connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detection {
    /// Too few bytes to tell: everything so far matches the start of a plain handshake.
    NeedMore,
    /// A plain BitTorrent handshake (`\x13BitTorrent protocol`).
    Plain,
    /// Anything else: the start of an MSE handshake (its first 96 bytes are a DH public key).
    Encrypted,
}

/// Tells a plain BitTorrent handshake from an MSE one by the first bytes of an incoming connection: the
/// 20-byte `\x13BitTorrent protocol` prefix means plain, any byte that departs from it means MSE. Looks at
/// no more than 20 bytes.
pub fn detect(first: &[u8]) -> Detection {
    let n = first.len().min(PREFIX.len());
    if first[..n] != PREFIX[..n] {
        Detection::Encrypted
    } else if n == PREFIX.len() {
        Detection::Plain
    } else {
        Detection::NeedMore
    }
}

/// The first 20 bytes of every plain BitTorrent handshake.
pub(crate) const PREFIX: &[u8; 20] = b"\x13BitTorrent protocol";

/// The step of the handshake an error happened in (for error messages and fallback decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Waiting for the peer's 96-byte public key.
    PublicKey,
    /// B: searching for `HASH('req1', S)`.
    Req1Sync,
    /// B: reading the obfuscated torrent hash, `VC`, `crypto_provide` and `len(PadC)`.
    CryptoProvide,
    /// B: reading `PadC` and `len(IA)`.
    PadC,
    /// A: searching for `ENCRYPT(VC)`.
    VcSync,
    /// A: reading `crypto_select` and `len(PadD)`.
    CryptoSelect,
    /// A: reading `PadD`.
    PadD,
    /// The handshake had finished.
    Done,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::PublicKey => "the peer's public key",
            Stage::Req1Sync => "the req1 synchronisation search",
            Stage::CryptoProvide => "crypto_provide",
            Stage::PadC => "PadC",
            Stage::VcSync => "the verification constant search",
            Stage::CryptoSelect => "crypto_select",
            Stage::PadD => "PadD",
            Stage::Done => "the payload stream",
        })
    }
}

/// Why an MSE handshake failed. Every error ends the connection; they are sticky.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MseError {
    /// The policy does not allow this handshake (an MSE handshake under `disable`).
    #[error("encryption is disabled by policy")]
    Disabled,
    /// Our initial payload is longer than `len(IA)` can say.
    #[error("initial payload of {0} bytes is longer than 65535")]
    InitialPayloadTooLong(usize),
    /// The peer's public key is outside [2, P-2] (a degenerate key fixes the shared secret).
    #[error("the peer's Diffie-Hellman public key is out of range")]
    InvalidPublicKey,
    /// B found no `HASH('req1', S)` within [`REQ1_SYNC_BOUND`] bytes.
    #[error("no HASH('req1', S) within the first {REQ1_SYNC_BOUND} bytes: not an MSE handshake, or too much padding")]
    Req1NotFound,
    /// A found no `ENCRYPT(VC)` within [`VC_SYNC_BOUND`] bytes.
    #[error("no encrypted verification constant within the first {VC_SYNC_BOUND} bytes: the peer does not speak MSE, or used another key")]
    VcNotFound,
    /// The obfuscated info-hash matched none of our torrents.
    #[error("the peer asked for a torrent we do not have")]
    UnknownTorrent,
    /// B decrypted something other than 8 zero bytes where `VC` belongs.
    #[error("the verification constant did not decrypt to zeros")]
    BadVerificationConstant,
    /// `crypto_provide` offered nothing our policy allows.
    #[error("the peer offers crypto {provided:#x}, our policy allows {allowed:#x}")]
    NoCommonMethod {
        /// The peer's `crypto_provide`.
        provided: u32,
        /// Our allowed methods.
        allowed: u32,
    },
    /// `crypto_select` is not exactly one of the methods we offered.
    #[error("the peer selected crypto {selected:#x}, we offered {offered:#x}")]
    BadSelect {
        /// The peer's `crypto_select`.
        selected: u32,
        /// Our `crypto_provide`.
        offered: u32,
    },
    /// `len(PadC)` or `len(PadD)` is over 512.
    #[error("padding of {0} bytes is longer than 512")]
    PadTooLong(u16),
    /// The peer we dialled answered with a plain BitTorrent handshake (`\x13BitTorrent protocol`)
    /// where its Diffie-Hellman public key belongs: it does not speak MSE (or not on this port).
    #[error("the peer answered our encryption handshake with a plain BitTorrent handshake")]
    PlainAnswer,
    /// The connection closed before the handshake finished.
    #[error("connection closed during {stage} after {received} bytes")]
    Closed {
        /// Where the handshake was.
        stage: Stage,
        /// Bytes received from the peer so far.
        received: usize,
    },
    /// The handshake did not finish before its deadline.
    #[error("handshake timed out during {stage} after {received} bytes")]
    Timeout {
        /// Where the handshake was.
        stage: Stage,
        /// Bytes received from the peer so far.
        received: usize,
    },
}

impl MseError {
    /// Whether this failure looks like a peer that does not speak MSE at all: it closed or went quiet
    /// before sending a whole public key (a plain peer reads our key as a broken handshake and hangs up, or
    /// waits for a handshake that never comes), or it answered with a plain BitTorrent handshake. Under [`Policy::Prefer`] such a peer is redialled with a
    /// plain handshake and remembered.
    pub fn suggests_plain_peer(&self) -> bool {
        matches!(
            self,
            MseError::PlainAnswer
                | MseError::Closed {
                    stage: Stage::PublicKey,
                    ..
                }
                | MseError::Timeout {
                    stage: Stage::PublicKey,
                    ..
                }
        )
    }
}

/// `HASH(parts...)`: SHA-1 over the concatenation.
fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `HASH('req2', info_hash)`: what an incoming handshake's obfuscated torrent hash is compared with. It does
/// not depend on the DH secret, so a session can keep a map from it to its torrents ([`Req2Map`]).
pub fn req2_hash(info_hash: &InfoHash) -> [u8; 20] {
    hash(&[b"req2", &info_hash.0])
}

//! Diffie-Hellman over MSE's 768-bit prime with generator 2 and a 160-bit private key. The arithmetic is
//! `num-bigint`'s; this file only fixes the group, the key sizes and the range check on the peer's key.

use num_bigint::BigUint;

use super::{MseError, PUBLIC_KEY_LEN};
use crate::rng::{CoreRng, Rng};

/// The 768-bit prime P, big-endian, as the MSE specification gives it (it shares its leading digits with
/// the Oakley primes but is its own number).
const PRIME: [u8; PUBLIC_KEY_LEN] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC9, 0x0F, 0xDA, 0xA2, 0x21, 0x68, 0xC2, 0x34,
    0xC4, 0xC6, 0x62, 0x8B, 0x80, 0xDC, 0x1C, 0xD1, 0x29, 0x02, 0x4E, 0x08, 0x8A, 0x67, 0xCC, 0x74,
    0x02, 0x0B, 0xBE, 0xA6, 0x3B, 0x13, 0x9B, 0x22, 0x51, 0x4A, 0x08, 0x79, 0x8E, 0x34, 0x04, 0xDD,
    0xEF, 0x95, 0x19, 0xB3, 0xCD, 0x3A, 0x43, 0x1B, 0x30, 0x2B, 0x0A, 0x6D, 0xF2, 0x5F, 0x14, 0x37,
    0x4F, 0xE1, 0x35, 0x6D, 0x6D, 0x51, 0xC2, 0x45, 0xE4, 0x85, 0xB5, 0x76, 0x62, 0x5E, 0x7E, 0xC6,
    0xF4, 0x4C, 0x42, 0xE9, 0xA6, 0x3A, 0x36, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x05, 0x63,
];

/// Length of the private exponent in bytes (160 bits, as the specification recommends).
const PRIVATE_KEY_LEN: usize = 20;

/// One side's key pair.
pub(super) struct KeyPair {
    private: BigUint,
    public: [u8; PUBLIC_KEY_LEN],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key pair with a 160-bit private key drawn from `rng` (never 0 or 1, whose public keys the
    /// peer would refuse).
    pub(super) fn generate(rng: &mut CoreRng) -> KeyPair {
        let mut bytes = [0u8; PRIVATE_KEY_LEN];
        rng.fill_bytes(&mut bytes);
        let mut private = BigUint::from_bytes_be(&bytes);
        if private < BigUint::from(2u8) {
            private += 2u8;
        }
        KeyPair::from_private(private)
    }

    /// The key pair of a given private exponent (tests use small ones for known answers).
    pub(super) fn from_private(private: BigUint) -> KeyPair {
        let public = to_fixed(&BigUint::from(2u8).modpow(&private, &prime()));
        KeyPair { private, public }
    }

    /// Our public key as sent: 96 bytes, big-endian, zero-padded on the left.
    pub(super) fn public(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.public
    }

    /// The shared secret S with the peer's public key, 96 bytes big-endian. Keys outside [2, P-2] are
    /// refused: 0, 1 and P-1 would pin S to a value an observer knows.
    pub(super) fn shared_secret(
        &self,
        peer_public: &[u8; PUBLIC_KEY_LEN],
    ) -> Result<[u8; PUBLIC_KEY_LEN], MseError> {
        let p = prime();
        let y = BigUint::from_bytes_be(peer_public);
        if y < BigUint::from(2u8) || y >= &p - 1u8 {
            return Err(MseError::InvalidPublicKey);
        }
        Ok(to_fixed(&y.modpow(&self.private, &p)))
    }
}

fn prime() -> BigUint {
    BigUint::from_bytes_be(&PRIME)
}

/// A number below P as exactly 96 big-endian bytes.
fn to_fixed(n: &BigUint) -> [u8; PUBLIC_KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; PUBLIC_KEY_LEN];
    // Below P, so at most 96 bytes; `skip` keeps this panic-free regardless.
    let skip = bytes.len().saturating_sub(PUBLIC_KEY_LEN);
    let bytes = &bytes[skip..];
    out[PUBLIC_KEY_LEN - bytes.len()..].copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;

    #[test]
    fn known_small_exponents() {
        // 2^2 = 4 and 2^10 = 1024, left-padded to 96 bytes.
        let k = KeyPair::from_private(BigUint::from(2u8));
        let mut four = [0u8; PUBLIC_KEY_LEN];
        four[95] = 4;
        assert_eq!(k.public(), &four);
        let k = KeyPair::from_private(BigUint::from(10u8));
        assert_eq!(&k.public()[94..], &[4, 0]);
        assert!(k.public()[..94].iter().all(|&b| b == 0));
    }

    #[test]
    fn prime_is_the_768_bit_oakley_prime() {
        let p = prime();
        assert_eq!(p.bits(), 768);
        // MSE's P ends in "...F44C42E9A63A36210000000000090563" (as the specification prints it).
        assert_eq!(
            &PRIME[80..],
            &[0xF4, 0x4C, 0x42, 0xE9, 0xA6, 0x3A, 0x36, 0x21, 0, 0, 0, 0, 0, 0x09, 0x05, 0x63]
        );
    }

    #[test]
    fn both_sides_agree_and_degenerate_keys_are_refused() {
        let mut rng = seeded(1);
        let a = KeyPair::generate(&mut rng);
        let b = KeyPair::generate(&mut rng);
        let sa = a.shared_secret(b.public()).expect("valid key");
        let sb = b.shared_secret(a.public()).expect("valid key");
        assert_eq!(sa, sb);
        assert_ne!(a.public(), b.public());

        let mut bad = [0u8; PUBLIC_KEY_LEN];
        assert_eq!(a.shared_secret(&bad), Err(MseError::InvalidPublicKey));
        bad[95] = 1;
        assert_eq!(a.shared_secret(&bad), Err(MseError::InvalidPublicKey));
        bad[95] = 2;
        assert!(a.shared_secret(&bad).is_ok());
        let p_minus_1 = to_fixed(&(prime() - 1u8));
        assert_eq!(a.shared_secret(&p_minus_1), Err(MseError::InvalidPublicKey));
        assert_eq!(
            a.shared_secret(&[0xff; PUBLIC_KEY_LEN]),
            Err(MseError::InvalidPublicKey)
        );
        assert_eq!(a.shared_secret(&PRIME), Err(MseError::InvalidPublicKey));
    }
}

//! Node ids: 160-bit identifiers, the XOR metric, and BEP 42's binding of an id to an IP address.

use std::fmt;
use std::net::IpAddr;

use crate::rng::{CoreRng, Rng, RngExt};
use crate::types::{write_hex, InfoHash};

/// A DHT node id (or a lookup target: info-hashes live in the same 160-bit space).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; 20]);

impl NodeId {
    /// A uniformly random id.
    pub fn random(rng: &mut CoreRng) -> NodeId {
        let mut id = [0u8; 20];
        rng.fill_bytes(&mut id);
        NodeId(id)
    }

    /// The XOR distance to `other`, itself a 160-bit number compared as big-endian bytes.
    pub fn distance(&self, other: &NodeId) -> [u8; 20] {
        let mut d = [0u8; 20];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// How many leading bits this id shares with `other` (160 when equal).
    pub fn common_prefix_len(&self, other: &NodeId) -> usize {
        for i in 0..20 {
            let x = self.0[i] ^ other.0[i];
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        160
    }

    /// Bit `i` (0 = most significant) of the id.
    pub fn bit(&self, i: usize) -> bool {
        i < 160 && self.0[i / 8] & (0x80 >> (i % 8)) != 0
    }

    /// A random id that shares exactly its first `prefix_len` bits with `self` and differs in the next one
    /// (any id when `prefix_len` is 160): a target inside one routing-table bucket, for refreshing it.
    pub fn random_in_bucket(&self, prefix_len: usize, rng: &mut CoreRng) -> NodeId {
        let mut out = NodeId::random(rng);
        let keep = prefix_len.min(160);
        for i in 0..keep {
            set_bit(&mut out.0, i, self.bit(i));
        }
        if keep < 160 {
            set_bit(&mut out.0, keep, !self.bit(keep));
        }
        out
    }

    /// A BEP 42 id for a node whose external address is `ip`: the first 21 bits come from the CRC32-C of
    /// the masked address, the last byte carries the random `r` used for it, the rest is random. Other
    /// nodes can then check that an id was not chosen to sit next to a victim target.
    pub fn secure(ip: IpAddr, rng: &mut CoreRng) -> NodeId {
        let rand_byte: u8 = rng.random();
        let mut id = NodeId::random(rng);
        let crc = bep42_crc(ip, rand_byte & 7);
        id.0[0] = (crc >> 24) as u8;
        id.0[1] = (crc >> 16) as u8;
        id.0[2] = ((crc >> 8) as u8 & 0xf8) | (id.0[2] & 7);
        id.0[19] = rand_byte;
        id
    }

    /// Whether this id is valid for `ip` under BEP 42. Local, private and loopback addresses are exempt
    /// (any id is accepted for them), as the BEP says.
    pub fn is_secure_for(&self, ip: IpAddr) -> bool {
        if bep42_exempt(ip) {
            return true;
        }
        let crc = bep42_crc(ip, self.0[19] & 7);
        self.0[0] == (crc >> 24) as u8
            && self.0[1] == (crc >> 16) as u8
            && self.0[2] & 0xf8 == (crc >> 8) as u8 & 0xf8
    }
}

fn set_bit(bytes: &mut [u8; 20], i: usize, on: bool) {
    let mask = 0x80 >> (i % 8);
    if on {
        bytes[i / 8] |= mask;
    } else {
        bytes[i / 8] &= !mask;
    }
}

impl From<InfoHash> for NodeId {
    fn from(ih: InfoHash) -> NodeId {
        NodeId(ih.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Addresses BEP 42 does not apply to: loopback, private (RFC 1918), link-local, unique-local and
/// unspecified addresses, where many nodes legitimately share a prefix.
pub fn bep42_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return bep42_exempt(IpAddr::V4(v4));
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || seg0 & 0xfe00 == 0xfc00 // unique local fc00::/7
                || seg0 & 0xffc0 == 0xfe80 // link-local fe80::/10
        }
    }
}

/// CRC32-C of the masked address with `r` in its top three bits, the BEP 42 recipe.
fn bep42_crc(ip: IpAddr, r: u8) -> u32 {
    match ip {
        IpAddr::V4(v4) => {
            let mask = [0x03, 0x0f, 0x3f, 0xff];
            let mut b = v4.octets();
            for (x, m) in b.iter_mut().zip(mask) {
                *x &= m;
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
        IpAddr::V6(v6) => {
            let mask = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];
            let o = v6.octets();
            let mut b = [0u8; 8];
            for i in 0..8 {
                b[i] = o[i] & mask[i];
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
    }
}

/// CRC32-C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: it only ever sees 4 or 8 bytes.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;
    use std::net::Ipv4Addr;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    /// The test vectors from BEP 42: (ip, rand byte, first three bytes of the id, masked to 21 bits).
    #[test]
    fn bep42_vectors() {
        let vectors: [([u8; 4], u8, [u8; 3]); 5] = [
            ([124, 31, 75, 21], 1, [0x5f, 0xbf, 0xbf]),
            ([21, 75, 31, 124], 86, [0x5a, 0x3c, 0xe9]),
            ([65, 23, 51, 170], 22, [0xa5, 0xd4, 0x32]),
            ([84, 124, 73, 14], 65, [0x1b, 0x03, 0x21]),
            ([43, 213, 53, 83], 90, [0xe5, 0x6f, 0x6c]),
        ];
        for (ip, r, prefix) in vectors {
            let ip = IpAddr::V4(Ipv4Addr::from(ip));
            let crc = bep42_crc(ip, r & 7);
            assert_eq!((crc >> 24) as u8, prefix[0], "{ip}");
            assert_eq!((crc >> 16) as u8, prefix[1], "{ip}");
            assert_eq!((crc >> 8) as u8 & 0xf8, prefix[2] & 0xf8, "{ip}");
            let mut id = NodeId([0; 20]);
            id.0[..3].copy_from_slice(&prefix);
            id.0[19] = r;
            assert!(id.is_secure_for(ip));
            id.0[1] ^= 1;
            assert!(!id.is_secure_for(ip));
        }
    }

    #[test]
    fn secure_ids_validate_and_local_addresses_are_exempt() {
        let mut rng = seeded(3);
        for ip in ["1.2.3.4", "203.0.113.9", "2001:db8::1", "8.8.4.4"] {
            let ip: IpAddr = ip.parse().expect("literal");
            let id = NodeId::secure(ip, &mut rng);
            assert!(id.is_secure_for(ip), "{ip}");
        }
        let other: IpAddr = "9.9.9.9".parse().expect("literal");
        let id = NodeId::secure("1.2.3.4".parse().expect("literal"), &mut rng);
        assert!(!id.is_secure_for(other));
        for ip in [
            "127.0.0.1",
            "192.168.1.1",
            "10.0.0.2",
            "::1",
            "fe80::1",
            "fd00::2",
        ] {
            assert!(NodeId([0x55; 20]).is_secure_for(ip.parse().expect("literal")));
        }
    }

    #[test]
    fn prefix_and_bucket_targets() {
        let mut rng = seeded(9);
        let me = NodeId::random(&mut rng);
        assert_eq!(me.common_prefix_len(&me), 160);
        for len in [0, 1, 7, 8, 42, 159] {
            let t = me.random_in_bucket(len, &mut rng);
            assert_eq!(me.common_prefix_len(&t), len);
        }
    }
}

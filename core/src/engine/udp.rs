//! Demultiplexing the engine's one UDP socket. UDP trackers (BEP 15), the DHT (BEP 5) and uTP
//! (BEP 29) share one socket bound to the same port number as the TCP listener; each datagram is
//! routed by what it looks like:
//!
//! - a bencoded dictionary (first byte `d`) is KRPC, for the DHT node;
//! - a uTP header (version 1 in the low nibble of the first byte, a packet type 0 to 4 in the high
//!   nibble: `0x01`, `0x11`, `0x21`, `0x31`, `0x41`) is uTP, for the engine's `UtpSocket`
//!   (`engine/utp.rs`), which routes it by (source address, connection id);
//! - anything else goes to the UDP tracker router, which accepts only a reply from the address it
//!   asked with the transaction id it chose (a BEP 15 reply starts with its action, 0 to 3, as a
//!   big-endian 32-bit number, so its first byte is 0) and drops the rest.

/// What one datagram on the shared socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// KRPC (the DHT).
    Krpc,
    /// A uTP packet.
    Utp,
    /// A UDP tracker reply, or junk (the router tells them apart by address and transaction id).
    Tracker,
}

/// Shortest uTP header.
const UTP_HEADER: usize = 20;

/// Classifies a datagram by its first bytes (see the module documentation).
pub fn classify(data: &[u8]) -> DatagramKind {
    match data.first() {
        Some(b'd') => DatagramKind::Krpc,
        Some(&b) if data.len() >= UTP_HEADER && b & 0x0f == 1 && b >> 4 <= 4 => DatagramKind::Utp,
        _ => DatagramKind::Tracker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::udp::Action;

    #[test]
    fn each_protocol_is_told_apart() {
        assert_eq!(
            classify(b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe"),
            DatagramKind::Krpc
        );
        // BEP 15 replies: connect (action 0), announce (1), scrape (2), error (3).
        for action in [
            Action::Connect,
            Action::Announce,
            Action::Scrape,
            Action::Error,
        ] {
            let mut reply = action.to_wire().to_be_bytes().to_vec();
            reply.extend_from_slice(&[7; 12]);
            assert_eq!(classify(&reply), DatagramKind::Tracker, "{action:?}");
        }
        for ty in 0u8..5 {
            let mut utp = vec![(ty << 4) | 1];
            utp.extend_from_slice(&[0; 19]);
            assert_eq!(classify(&utp), DatagramKind::Utp, "type {ty}");
        }
        assert_eq!(
            classify(&[0x01; 4]),
            DatagramKind::Tracker,
            "too short for uTP"
        );
        assert_eq!(
            classify(&[0x51; 20]),
            DatagramKind::Tracker,
            "no uTP type 5"
        );
        assert_eq!(classify(&[]), DatagramKind::Tracker);
    }
}

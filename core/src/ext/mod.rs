//! BEP 10 extensions that ride on the extension protocol: `ut_metadata` (BEP 9, fetching and serving
//! the info dictionary for magnet links) and `ut_pex` (BEP 11, peer exchange).
//!
//! Everything here is sans-IO. The peer session owns the BEP 10 handshake itself and hands the layer
//! above the peer's `m` map and `metadata_size`; these helpers say which names *we* register under which
//! local ids ([`local_extensions`], [`handshake_fields`]), route an incoming extended message by its id
//! ([`LocalExtension::from_id`]) and find the id a peer wants for a name ([`peer_extension_id`]).
//!
//! - [`metadata`]: the `ut_metadata` codec, a [`metadata::MetadataFetcher`] that assembles and verifies
//!   the info dictionary from several peers, and a [`metadata::MetadataServer`] that answers requests.
//! - [`pex`]: the `ut_pex` codec, a per-connection [`pex::PexSender`] and [`pex::PexReceiver`].
//!
//! Private torrents (BEP 27) must not use PEX: [`local_extensions`] leaves `ut_pex` out for them and the
//! PEX constructors refuse them.
//!
//! ## Wiring (for the engine)
//! - Our handshake: `m` = [`local_extensions`]`(private)`, plus `metadata_size` from
//!   [`metadata::MetadataServer::metadata_size`] ([`handshake_fields`] builds both).
//! - After the peer's handshake: `fetcher.add_peer(key, peer.metadata_size,
//!   peer_extension_id(&peer.messages, UT_METADATA).is_some())` for a magnet torrent still fetching;
//!   a [`pex::PexSender`] and [`pex::PexReceiver`] for the connection if the peer registered `ut_pex`
//!   and the torrent is not private.
//! - Incoming `Extended { id, payload }`: route with [`LocalExtension::from_id`]; ut_metadata payloads
//!   decode to a request (answer with the server), data (`fetcher.handle_data`) or reject
//!   (`fetcher.handle_reject`); a [`metadata::MetadataMessageError::UnknownType`] is ignored.
//! - Outgoing: drain `fetcher.poll_request(now)` and `sender.poll_message(now, &connected)`, send with
//!   the *peer's* id for the name; wake at `fetcher.poll_timeout()` / `sender.next_send_time()`.

use std::collections::BTreeMap;

use crate::bencode::OwnedValue;

pub mod metadata;
pub mod pex;

/// The BEP 10 name of the metadata extension (BEP 9).
pub const UT_METADATA: &str = "ut_metadata";
/// The BEP 10 name of the peer exchange extension (BEP 11).
pub const UT_PEX: &str = "ut_pex";

/// The extension message id we ask peers to use when they send us `ut_metadata` messages.
pub const LOCAL_UT_METADATA_ID: u8 = 1;
/// The extension message id we ask peers to use when they send us `ut_pex` messages.
pub const LOCAL_UT_PEX_ID: u8 = 2;

/// One of the extensions we implement, as identified by the id a peer put on a message it sent us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LocalExtension {
    /// `ut_metadata` (BEP 9).
    Metadata,
    /// `ut_pex` (BEP 11).
    Pex,
}

impl LocalExtension {
    /// Every extension we implement, in id order.
    pub const ALL: [LocalExtension; 2] = [LocalExtension::Metadata, LocalExtension::Pex];

    /// Which of our extensions an incoming `Extended { id, .. }` message is for (id 0 is the handshake
    /// and unknown ids are `None`; BEP 10 says to ignore messages we did not register).
    pub fn from_id(id: u8) -> Option<LocalExtension> {
        match id {
            LOCAL_UT_METADATA_ID => Some(LocalExtension::Metadata),
            LOCAL_UT_PEX_ID => Some(LocalExtension::Pex),
            _ => None,
        }
    }

    /// The id we register for this extension in our handshake's `m` map.
    pub fn id(self) -> u8 {
        match self {
            LocalExtension::Metadata => LOCAL_UT_METADATA_ID,
            LocalExtension::Pex => LOCAL_UT_PEX_ID,
        }
    }

    /// The extension's BEP 10 name.
    pub fn name(self) -> &'static str {
        match self {
            LocalExtension::Metadata => UT_METADATA,
            LocalExtension::Pex => UT_PEX,
        }
    }
}

/// Our `m` map: extension name to the id peers should send it to us with. `ut_pex` is left out for a
/// private torrent (BEP 27), so a peer never even learns we could exchange peers for it.
pub fn local_extensions(private: bool) -> BTreeMap<String, u8> {
    LocalExtension::ALL
        .iter()
        .filter(|e| !(private && **e == LocalExtension::Pex))
        .map(|e| (e.name().to_owned(), e.id()))
        .collect()
}

/// The part of our BEP 10 handshake that concerns these extensions, as a dictionary the peer session
/// can extend with its own keys (`v`, `p`, `reqq`): `m` from `local`, plus `metadata_size` when we have
/// the info dictionary (a torrent added from a magnet link sends none until it has fetched it).
pub fn handshake_fields(local: &BTreeMap<String, u8>, metadata_size: Option<u64>) -> OwnedValue {
    let m: BTreeMap<Vec<u8>, OwnedValue> = local
        .iter()
        .map(|(name, id)| (name.as_bytes().to_vec(), OwnedValue::Int(i64::from(*id))))
        .collect();
    let mut d = OwnedValue::dict().with("m", OwnedValue::Dict(m));
    if let Some(size) = metadata_size.and_then(|s| i64::try_from(s).ok()) {
        d.insert("metadata_size", size);
    }
    d
}

/// The id the peer wants us to use when we send it extension `name`, or `None` if it did not register
/// the name (or disabled it with id 0).
pub fn peer_extension_id(peer_m: &BTreeMap<String, u8>, name: &str) -> Option<u8> {
    peer_m.get(name).copied().filter(|id| *id != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode;

    #[test]
    fn ids_route_to_extensions_and_back() {
        for e in LocalExtension::ALL {
            assert_eq!(LocalExtension::from_id(e.id()), Some(e));
        }
        assert_eq!(LocalExtension::from_id(0), None);
        assert_eq!(LocalExtension::from_id(3), None);
        assert_eq!(LocalExtension::Pex.name(), "ut_pex");
    }

    #[test]
    fn private_torrents_do_not_register_pex() {
        let public = local_extensions(false);
        assert_eq!(public.get(UT_METADATA), Some(&LOCAL_UT_METADATA_ID));
        assert_eq!(public.get(UT_PEX), Some(&LOCAL_UT_PEX_ID));
        let private = local_extensions(true);
        assert_eq!(private.get(UT_METADATA), Some(&LOCAL_UT_METADATA_ID));
        assert!(!private.contains_key(UT_PEX));
    }

    #[test]
    fn handshake_fields_encode_m_and_metadata_size() {
        let d = handshake_fields(&local_extensions(false), Some(31235));
        assert_eq!(
            d.encode(),
            b"d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235ee".to_vec()
        );
        let d = handshake_fields(&local_extensions(true), None);
        let bytes = d.encode();
        let v = bencode::decode(&bytes).unwrap();
        assert!(v.get(b"metadata_size").is_none());
        assert_eq!(
            v.get(b"m")
                .and_then(|m| m.get(b"ut_metadata"))
                .and_then(|i| i.as_int()),
            Some(1)
        );
    }

    #[test]
    fn peer_ids_are_looked_up_by_name() {
        let mut m = BTreeMap::new();
        m.insert("ut_metadata".to_owned(), 3u8);
        m.insert("ut_pex".to_owned(), 0u8);
        assert_eq!(peer_extension_id(&m, UT_METADATA), Some(3));
        assert_eq!(peer_extension_id(&m, UT_PEX), None);
        assert_eq!(peer_extension_id(&m, "lt_donthave"), None);
    }
}

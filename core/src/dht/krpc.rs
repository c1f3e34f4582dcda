//! KRPC (BEP 5): the bencoded query / response / error messages DHT nodes exchange over UDP, with the
//! compact node and peer formats for IPv4 and IPv6 (BEP 32), `ro` (BEP 43) and `ip` (BEP 42).
//!
//! Decoding is lenient about what it does not need (unknown keys are ignored, as the BEP asks) and strict
//! about what it does: a 20-byte `id`, byte-string transaction ids of bounded length, well-formed compact
//! entries. Nothing a datagram says is trusted for an allocation size: lists only grow by what is parsed,
//! and the decoder refuses datagrams larger than [`MAX_DATAGRAM`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::bencode::{self, DecodeOptions, OwnedValue, Value};
use crate::types::InfoHash;

use super::id::NodeId;

/// The largest datagram the decoder looks at; KRPC messages are far smaller (a full `get_peers` reply
/// is about 1.5 KB), so anything larger is noise or an attack.
pub const MAX_DATAGRAM: usize = 4096;
/// The longest transaction id accepted; real clients use 2 to 4 bytes.
pub const MAX_TID: usize = 16;
/// The most peers a decoded `values` list keeps.
pub const MAX_VALUES: usize = 256;

/// Error codes of BEP 5.
pub mod error_code {
    /// Generic error.
    pub const GENERIC: i64 = 201;
    /// Server error.
    pub const SERVER: i64 = 202;
    /// Protocol error: malformed packet, invalid arguments or bad token.
    pub const PROTOCOL: i64 = 203;
    /// Method unknown.
    pub const METHOD_UNKNOWN: i64 = 204;
}

/// A node's contact: its id and UDP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Which address families a querier wants nodes for (BEP 32 `want`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    /// `n4`: IPv4 nodes in `nodes`.
    pub v4: bool,
    /// `n6`: IPv6 nodes in `nodes6`.
    pub v6: bool,
}

/// The method of a query and its arguments (beyond the querier's id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKind {
    /// `ping`.
    Ping,
    /// `find_node`: the k closest nodes to `target`.
    FindNode {
        /// The id looked for.
        target: NodeId,
    },
    /// `get_peers`: peers for the torrent, or the closest nodes and a token.
    GetPeers {
        /// The torrent.
        info_hash: InfoHash,
    },
    /// `announce_peer`: the querier is a peer of the torrent.
    AnnouncePeer {
        /// The torrent.
        info_hash: InfoHash,
        /// The port it gave (ignored when `implied_port`).
        port: u16,
        /// Use the UDP source port instead of `port` (NAT-friendly).
        implied_port: bool,
        /// The token from our earlier `get_peers` reply.
        token: Vec<u8>,
    },
    /// A method this node does not know (answered with error 204).
    Unknown(Vec<u8>),
}

impl QueryKind {
    /// The method name on the wire.
    pub fn method(&self) -> &[u8] {
        match self {
            QueryKind::Ping => b"ping",
            QueryKind::FindNode { .. } => b"find_node",
            QueryKind::GetPeers { .. } => b"get_peers",
            QueryKind::AnnouncePeer { .. } => b"announce_peer",
            QueryKind::Unknown(m) => m,
        }
    }
}

/// A query: who asks, what, and for which families.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The querier's node id.
    pub id: NodeId,
    /// The method and its arguments.
    pub kind: QueryKind,
    /// BEP 32 `want`; both false means "the family of the address the query came from".
    pub want: Want,
}

/// A response's body (`r`): whatever the method returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// The responder's id.
    pub id: NodeId,
    /// Compact IPv4 nodes (`nodes`).
    pub nodes: Vec<NodeInfo>,
    /// Compact IPv6 nodes (`nodes6`).
    pub nodes6: Vec<NodeInfo>,
    /// The announce token (`get_peers`).
    pub token: Option<Vec<u8>>,
    /// Peers (`values`), IPv4 and IPv6.
    pub values: Vec<SocketAddr>,
}

/// What a message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `y = q`.
    Query(Query),
    /// `y = r`.
    Response(Response),
    /// `y = e`: a code and a message.
    Error {
        /// One of [`error_code`] (or another number the remote chose).
        code: i64,
        /// Human-readable text.
        message: String,
    },
}

/// One KRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The transaction id, echoed by the responder.
    pub tid: Vec<u8>,
    /// The sender's client version (`v`), if given.
    pub version: Option<Vec<u8>>,
    /// BEP 43: the querier is read-only and must not be added to routing tables.
    pub read_only: bool,
    /// BEP 42: in responses, the address the responder saw the query come from.
    pub ip: Option<SocketAddr>,
    /// The message itself.
    pub body: Body,
}

/// Why a datagram is not a usable KRPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrpcErrorKind {
    /// Longer than [`MAX_DATAGRAM`].
    #[error("datagram too large")]
    TooLarge,
    /// Not a bencoded dictionary.
    #[error("not a bencoded dictionary")]
    NotBencode,
    /// A required key is missing or has the wrong type or size.
    #[error("missing or invalid key {0}")]
    BadKey(&'static str),
    /// `y` is not `q`, `r` or `e`.
    #[error("unknown message type")]
    BadType,
}

/// A decode failure, with what could still be recovered to answer it (a query with a transaction id
/// deserves error 203; anything else is dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct KrpcError {
    /// What was wrong.
    pub kind: KrpcErrorKind,
    /// The transaction id, if the datagram had a valid one.
    pub tid: Option<Vec<u8>>,
    /// Whether the datagram said it is a query.
    pub is_query: bool,
}

fn err(kind: KrpcErrorKind, tid: &Option<Vec<u8>>, is_query: bool) -> KrpcError {
    KrpcError {
        kind,
        tid: tid.clone(),
        is_query,
    }
}

/// Decodes one datagram.
pub fn decode(bytes: &[u8]) -> Result<Message, KrpcError> {
    let none = None;
    if bytes.len() > MAX_DATAGRAM {
        return Err(err(KrpcErrorKind::TooLarge, &none, false));
    }
    // KRPC nests at most three levels (message, arguments, want list); allow a little slack.
    let root = bencode::decode_with(bytes, DecodeOptions { max_depth: 6 })
        .map_err(|_| err(KrpcErrorKind::NotBencode, &none, false))?;
    if root.as_dict().is_none() {
        return Err(err(KrpcErrorKind::NotBencode, &none, false));
    }
    let tid = root
        .get(b"t")
        .and_then(Value::as_bytes)
        .filter(|t| t.len() <= MAX_TID)
        .map(<[u8]>::to_vec);
    let y = root.get(b"y").and_then(Value::as_bytes);
    let is_query = y == Some(b"q");
    let Some(t) = tid.clone() else {
        return Err(err(KrpcErrorKind::BadKey("t"), &tid, is_query));
    };
    let version = root
        .get(b"v")
        .and_then(Value::as_bytes)
        .filter(|v| v.len() <= MAX_TID)
        .map(<[u8]>::to_vec);
    let read_only = root.get(b"ro").and_then(Value::as_int) == Some(1);
    let ip = root
        .get(b"ip")
        .and_then(Value::as_bytes)
        .and_then(decode_compact_addr);
    let body = match y {
        Some(b"q") => Body::Query(decode_query(&root).map_err(|k| err(k, &tid, true))?),
        Some(b"r") => {
            let r = root
                .get(b"r")
                .filter(|r| r.as_dict().is_some())
                .ok_or_else(|| err(KrpcErrorKind::BadKey("r"), &tid, false))?;
            Body::Response(decode_response(r).map_err(|k| err(k, &tid, false))?)
        }
        Some(b"e") => {
            let list = root
                .get(b"e")
                .and_then(Value::as_list)
                .ok_or_else(|| err(KrpcErrorKind::BadKey("e"), &tid, false))?;
            let code = list
                .first()
                .and_then(Value::as_int)
                .ok_or_else(|| err(KrpcErrorKind::BadKey("e"), &tid, false))?;
            let message = list
                .get(1)
                .and_then(Value::as_bytes)
                .map(|m| String::from_utf8_lossy(&m[..m.len().min(256)]).into_owned())
                .unwrap_or_default();
            Body::Error { code, message }
        }
        _ => return Err(err(KrpcErrorKind::BadType, &tid, false)),
    };
    Ok(Message {
        tid: t,
        version,
        read_only,
        ip,
        body,
    })
}

fn id20(v: Option<&Value<'_>>, key: &'static str) -> Result<[u8; 20], KrpcErrorKind> {
    v.and_then(Value::as_bytes)
        .and_then(|b| <[u8; 20]>::try_from(b).ok())
        .ok_or(KrpcErrorKind::BadKey(key))
}

fn decode_query(root: &Value<'_>) -> Result<Query, KrpcErrorKind> {
    let method = root
        .get(b"q")
        .and_then(Value::as_bytes)
        .ok_or(KrpcErrorKind::BadKey("q"))?;
    let a = root
        .get(b"a")
        .filter(|a| a.as_dict().is_some())
        .ok_or(KrpcErrorKind::BadKey("a"))?;
    let id = NodeId(id20(a.get(b"id"), "id")?);
    let mut want = Want::default();
    if let Some(list) = a.get(b"want").and_then(Value::as_list) {
        for w in list {
            match w.as_bytes() {
                Some(b"n4") => want.v4 = true,
                Some(b"n6") => want.v6 = true,
                _ => {}
            }
        }
    }
    let kind = match method {
        b"ping" => QueryKind::Ping,
        b"find_node" => QueryKind::FindNode {
            target: NodeId(id20(a.get(b"target"), "target")?),
        },
        b"get_peers" => QueryKind::GetPeers {
            info_hash: InfoHash(id20(a.get(b"info_hash"), "info_hash")?),
        },
        b"announce_peer" => {
            let info_hash = InfoHash(id20(a.get(b"info_hash"), "info_hash")?);
            let implied_port = a
                .get(b"implied_port")
                .and_then(Value::as_int)
                .is_some_and(|n| n != 0);
            let port = match a.get(b"port").and_then(Value::as_int) {
                Some(p) => u16::try_from(p).map_err(|_| KrpcErrorKind::BadKey("port"))?,
                None if implied_port => 0,
                None => return Err(KrpcErrorKind::BadKey("port")),
            };
            let token = a
                .get(b"token")
                .and_then(Value::as_bytes)
                .filter(|t| t.len() <= 64)
                .ok_or(KrpcErrorKind::BadKey("token"))?
                .to_vec();
            QueryKind::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            }
        }
        other => QueryKind::Unknown(other[..other.len().min(32)].to_vec()),
    };
    Ok(Query { id, kind, want })
}

fn decode_response(r: &Value<'_>) -> Result<Response, KrpcErrorKind> {
    let id = NodeId(id20(r.get(b"id"), "id")?);
    let mut resp = Response {
        id,
        ..Response::default()
    };
    if let Some(nodes) = r.get(b"nodes") {
        let b = nodes.as_bytes().ok_or(KrpcErrorKind::BadKey("nodes"))?;
        resp.nodes = decode_nodes(b, false);
    }
    if let Some(nodes) = r.get(b"nodes6") {
        let b = nodes.as_bytes().ok_or(KrpcErrorKind::BadKey("nodes6"))?;
        resp.nodes6 = decode_nodes(b, true);
    }
    if let Some(token) = r.get(b"token") {
        let t = token
            .as_bytes()
            .filter(|t| t.len() <= 64)
            .ok_or(KrpcErrorKind::BadKey("token"))?;
        resp.token = Some(t.to_vec());
    }
    if let Some(values) = r.get(b"values") {
        let list = values.as_list().ok_or(KrpcErrorKind::BadKey("values"))?;
        resp.values = list
            .iter()
            .filter_map(|v| v.as_bytes().and_then(decode_compact_addr))
            .filter(|a| a.port() != 0)
            .take(MAX_VALUES)
            .collect();
    }
    Ok(resp)
}

/// Decodes compact node info (26 bytes per IPv4 node, 38 per IPv6 node); a trailing partial entry and
/// entries with port 0 are skipped.
pub fn decode_nodes(bytes: &[u8], v6: bool) -> Vec<NodeInfo> {
    let size = if v6 { 38 } else { 26 };
    bytes
        .chunks_exact(size)
        .filter_map(|c| {
            let mut id = [0u8; 20];
            id.copy_from_slice(&c[..20]);
            decode_compact_addr(&c[20..]).map(|addr| NodeInfo {
                id: NodeId(id),
                addr,
            })
        })
        .filter(|n| n.addr.port() != 0)
        .collect()
}

/// Decodes a compact address: 4 + 2 bytes for IPv4, 16 + 2 for IPv6 (network byte order).
pub fn decode_compact_addr(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        6 => {
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be_bytes([b[4], b[5]]),
            )))
        }
        18 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(o),
                u16::from_be_bytes([b[16], b[17]]),
                0,
                0,
            )))
        }
        _ => None,
    }
}

/// Appends the compact form of `addr`.
pub fn encode_compact_addr(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// The compact node list of the given family (nodes of the other family are left out).
pub fn encode_nodes(nodes: &[NodeInfo], v6: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * if v6 { 38 } else { 26 });
    for n in nodes.iter().filter(|n| n.addr.is_ipv6() == v6) {
        out.extend_from_slice(&n.id.0);
        encode_compact_addr(&n.addr, &mut out);
    }
    out
}

impl Message {
    /// The bencoded datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = OwnedValue::dict().with("t", self.tid.clone());
        if let Some(v) = &self.version {
            m.insert("v", v.clone());
        }
        if self.read_only {
            m.insert("ro", 1);
        }
        if let Some(ip) = &self.ip {
            let mut b = Vec::with_capacity(18);
            encode_compact_addr(ip, &mut b);
            m.insert("ip", b);
        }
        match &self.body {
            Body::Query(q) => {
                m.insert("y", "q");
                m.insert("q", q.kind.method());
                let mut a = OwnedValue::dict().with("id", q.id.0.to_vec());
                match &q.kind {
                    QueryKind::Ping | QueryKind::Unknown(_) => {}
                    QueryKind::FindNode { target } => {
                        a.insert("target", target.0.to_vec());
                    }
                    QueryKind::GetPeers { info_hash } => {
                        a.insert("info_hash", info_hash.0.to_vec());
                    }
                    QueryKind::AnnouncePeer {
                        info_hash,
                        port,
                        implied_port,
                        token,
                    } => {
                        a.insert("info_hash", info_hash.0.to_vec());
                        a.insert("port", i64::from(*port));
                        a.insert("token", token.clone());
                        if *implied_port {
                            a.insert("implied_port", 1);
                        }
                    }
                }
                let mut want = Vec::new();
                if q.want.v4 {
                    want.push(OwnedValue::from("n4"));
                }
                if q.want.v6 {
                    want.push(OwnedValue::from("n6"));
                }
                if !want.is_empty() {
                    a.insert("want", want);
                }
                m.insert("a", a);
            }
            Body::Response(r) => {
                m.insert("y", "r");
                let mut d = OwnedValue::dict().with("id", r.id.0.to_vec());
                if !r.nodes.is_empty() {
                    d.insert("nodes", encode_nodes(&r.nodes, false));
                }
                if !r.nodes6.is_empty() {
                    d.insert("nodes6", encode_nodes(&r.nodes6, true));
                }
                if let Some(t) = &r.token {
                    d.insert("token", t.clone());
                }
                if !r.values.is_empty() {
                    let values: Vec<OwnedValue> = r
                        .values
                        .iter()
                        .map(|a| {
                            let mut b = Vec::with_capacity(18);
                            encode_compact_addr(a, &mut b);
                            OwnedValue::Bytes(b)
                        })
                        .collect();
                    d.insert("values", values);
                }
                m.insert("r", d);
            }
            Body::Error { code, message } => {
                m.insert("y", "e");
                m.insert(
                    "e",
                    vec![OwnedValue::Int(*code), OwnedValue::from(message.as_str())],
                );
            }
        }
        m.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 20])
    }

    #[test]
    fn bep5_examples_decode() {
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let m = decode(ping).expect("ping");
        assert_eq!(m.tid, b"aa");
        assert_eq!(
            m.body,
            Body::Query(Query {
                id: NodeId(*b"abcdefghij0123456789"),
                kind: QueryKind::Ping,
                want: Want::default()
            })
        );
        assert_eq!(m.encode(), ping.to_vec(), "canonical re-encoding");

        let announce = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe";
        let m = decode(announce).expect("announce");
        match &m.body {
            Body::Query(Query {
                kind:
                    QueryKind::AnnouncePeer {
                        port,
                        implied_port,
                        token,
                        ..
                    },
                ..
            }) => {
                assert_eq!(
                    (*port, *implied_port, token.as_slice()),
                    (6881, false, &b"aoeusnth"[..])
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(m.encode(), announce.to_vec());

        let e = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee";
        let m = decode(e).expect("error");
        assert_eq!(
            m.body,
            Body::Error {
                code: 201,
                message: "A Generic Error Ocurred".into()
            }
        );
        assert_eq!(m.encode(), e.to_vec());

        let values = b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re";
        let m = decode(values).expect("values");
        match &m.body {
            Body::Response(r) => {
                assert_eq!(r.values.len(), 2);
                assert_eq!(
                    r.values[0],
                    "97.120.106.101:11893".parse().expect("literal")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(m.encode(), values.to_vec());
    }

    #[test]
    fn malformed_queries_keep_their_tid_for_the_error_reply() {
        let e = decode(b"d1:ad2:id3:abce1:q4:ping1:t2:xy1:y1:qe").expect_err("short id");
        assert_eq!(e.tid.as_deref(), Some(&b"xy"[..]));
        assert!(e.is_query);
        let e = decode(b"d1:y1:qe").expect_err("no tid");
        assert_eq!(e.tid, None);
        let e = decode(b"i5e").expect_err("not a dict");
        assert_eq!(e.kind, KrpcErrorKind::NotBencode);
        let m = decode(b"d1:ad2:id20:abcdefghij0123456789e1:q3:foo1:t1:z1:y1:qe").expect("unknown");
        assert!(matches!(
            m.body,
            Body::Query(Query {
                kind: QueryKind::Unknown(_),
                ..
            })
        ));
        assert_eq!(
            decode(&vec![b' '; MAX_DATAGRAM + 1]).map_err(|e| e.kind),
            Err(KrpcErrorKind::TooLarge)
        );
    }

    #[test]
    fn compact_nodes_skip_partial_entries_and_port_zero() {
        let nodes = [
            NodeInfo {
                id: id(1),
                addr: "1.2.3.4:5".parse().expect("literal"),
            },
            NodeInfo {
                id: id(2),
                addr: "1.2.3.4:0".parse().expect("literal"),
            },
        ];
        let mut b = encode_nodes(&nodes, false);
        b.extend_from_slice(&[9; 7]);
        assert_eq!(decode_nodes(&b, false), vec![nodes[0]]);
    }

    fn arb_id() -> impl Strategy<Value = NodeId> {
        any::<[u8; 20]>().prop_map(NodeId)
    }
    fn arb_v4() -> impl Strategy<Value = SocketAddr> {
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, p)| SocketAddr::from((ip, p)))
    }
    fn arb_v6() -> impl Strategy<Value = SocketAddr> {
        (any::<[u8; 16]>(), 1u16..).prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p)))
    }
    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![arb_v4(), arb_v6()]
    }
    fn arb_query_kind() -> impl Strategy<Value = QueryKind> {
        prop_oneof![
            Just(QueryKind::Ping),
            arb_id().prop_map(|target| QueryKind::FindNode { target }),
            any::<[u8; 20]>().prop_map(|h| QueryKind::GetPeers {
                info_hash: InfoHash(h)
            }),
            (
                any::<[u8; 20]>(),
                any::<u16>(),
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..20)
            )
                .prop_map(|(h, port, implied_port, token)| QueryKind::AnnouncePeer {
                    info_hash: InfoHash(h),
                    port,
                    implied_port,
                    token
                }),
            "[a-z_]{1,12}"
                .prop_filter("not a known method", |m| !matches!(
                    m.as_str(),
                    "ping" | "find_node" | "get_peers" | "announce_peer"
                ))
                .prop_map(|m| QueryKind::Unknown(m.into_bytes())),
        ]
    }
    fn arb_body() -> impl Strategy<Value = Body> {
        let node4 = (arb_id(), arb_v4()).prop_map(|(id, addr)| NodeInfo { id, addr });
        let node6 = (arb_id(), arb_v6()).prop_map(|(id, addr)| NodeInfo { id, addr });
        prop_oneof![
            (arb_id(), arb_query_kind(), any::<bool>(), any::<bool>()).prop_map(
                |(id, kind, v4, v6)| Body::Query(Query {
                    id,
                    kind,
                    want: Want { v4, v6 }
                })
            ),
            (
                arb_id(),
                proptest::collection::vec(node4, 0..10),
                proptest::collection::vec(node6, 0..10),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                proptest::collection::vec(arb_addr(), 0..30)
            )
                .prop_map(|(id, nodes, nodes6, token, values)| Body::Response(
                    Response {
                        id,
                        nodes,
                        nodes6,
                        token,
                        values
                    }
                )),
            (any::<i64>(), "[ -~]{0,40}").prop_map(|(code, message)| Body::Error { code, message }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(
            tid in proptest::collection::vec(any::<u8>(), 0..=MAX_TID),
            version in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=8)),
            read_only in any::<bool>(),
            ip in proptest::option::of(arb_addr()),
            body in arb_body(),
        ) {
            let m = Message { tid, version, read_only, ip, body };
            let bytes = m.encode();
            prop_assert_eq!(decode(&bytes).expect("own encoding decodes"), m);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }

        /// Valid messages with bytes flipped or cut: decoding may fail but never panics, and what it
        /// accepts re-encodes to something that decodes to the same message.
        #[test]
        fn mutated_messages_never_panic(
            body in arb_body(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            let m = Message { tid: b"ab".to_vec(), version: None, read_only: false, ip: None, body };
            let mut bytes = m.encode();
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            let n = bytes.len();
            bytes.truncate(n - cut % (n / 4 + 1));
            if let Ok(decoded) = decode(&bytes) {
                prop_assert_eq!(decode(&decoded.encode()).expect("re-encoding decodes"), decoded);
            }
        }
    }
}

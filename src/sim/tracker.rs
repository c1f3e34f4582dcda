//! The simulated tracker: one swarm table answered over HTTP (BEP 3 with compact peers, BEP 23) and
//! over UDP (BEP 15), so the engine's real tracker code paths run inside the simulation.
//!
//! HTTP requests arrive as raw bytes on a simulated TCP connection; [`Tracker::http_request`] frames
//! them with `httparse`, decodes the query and answers with a bencoded body. UDP datagrams are decoded
//! with the core's BEP 15 message types. Peers are recorded by the request's source IP and the port it
//! announced, and dropped on `stopped`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use hyperblow_core::bencode::OwnedValue;
use hyperblow_core::rng::{CoreRng, RngExt};
use hyperblow_core::time::Instant;
use hyperblow_core::tracker::udp::{
    AddressFamily, AnnounceReply, ConnectResponse, ErrorReply, Request as UdpRequest,
    Response as UdpResponse,
};
use hyperblow_core::tracker::AnnounceEvent;
use hyperblow_core::{InfoHash, PeerId};

/// Which transport an announce came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    /// BEP 3 HTTP `GET /announce?...`.
    Http,
    /// BEP 15 UDP.
    Udp,
}

/// One announce the tracker answered, for tests to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRecord {
    /// When it arrived.
    pub at: Instant,
    /// Over which transport.
    pub transport: Transport,
    /// The peer as recorded (source IP, announced port).
    pub peer: SocketAddr,
    /// The torrent.
    pub info_hash: InfoHash,
    /// The event it reported.
    pub event: AnnounceEvent,
    /// Bytes left, as reported.
    pub left: u64,
    /// How many peers the reply carried.
    pub returned: usize,
}

/// What the tracker knows of one peer of a swarm.
#[derive(Debug, Clone, Copy)]
struct SwarmPeer {
    left: u64,
}

/// Why a request could not be answered normally (the text goes into `failure reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal(String);

/// The tracker's state: swarms keyed by info-hash, peers kept in address order.
#[derive(Debug)]
pub struct Tracker {
    /// `interval` sent in every reply, in seconds.
    pub interval: u32,
    /// Largest number of peers returned when the client does not ask for fewer.
    pub max_peers: usize,
    swarms: BTreeMap<InfoHash, BTreeMap<SocketAddr, SwarmPeer>>,
    /// UDP connection ids handed out (BEP 15 wants them checked).
    udp_ids: BTreeSet<u64>,
    log: Vec<AnnounceRecord>,
}

impl Tracker {
    /// An empty tracker that asks clients to re-announce every `interval` seconds.
    pub fn new(interval: u32) -> Tracker {
        Tracker {
            interval,
            max_peers: 50,
            swarms: BTreeMap::new(),
            udp_ids: BTreeSet::new(),
            log: Vec::new(),
        }
    }

    /// Every announce answered so far, in order.
    pub fn log(&self) -> &[AnnounceRecord] {
        &self.log
    }

    /// The peers currently registered for a torrent, in address order.
    pub fn swarm(&self, info_hash: &InfoHash) -> Vec<SocketAddr> {
        self.swarms
            .get(info_hash)
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Records an announce and picks the peers to return (every other peer, shuffled with `rng`, at
    /// most `num_want`). Returns the peers and the (seeders, leechers) counts.
    #[allow(clippy::too_many_arguments)]
    fn announce(
        &mut self,
        now: Instant,
        rng: &mut CoreRng,
        transport: Transport,
        info_hash: InfoHash,
        peer: SocketAddr,
        event: AnnounceEvent,
        left: u64,
        num_want: Option<usize>,
    ) -> (Vec<SocketAddr>, u32, u32) {
        let swarm = self.swarms.entry(info_hash).or_default();
        if event == AnnounceEvent::Stopped {
            swarm.remove(&peer);
        } else {
            swarm.insert(peer, SwarmPeer { left });
        }
        let mut others: Vec<SocketAddr> = if event == AnnounceEvent::Stopped {
            Vec::new()
        } else {
            swarm.keys().copied().filter(|a| *a != peer).collect()
        };
        // Fisher-Yates with the simulator's RNG: deterministic for a seed.
        for i in (1..others.len()).rev() {
            let j = rng.random_range(0..=i);
            others.swap(i, j);
        }
        others.truncate(num_want.unwrap_or(self.max_peers).min(self.max_peers));
        let seeders = swarm.values().filter(|p| p.left == 0).count() as u32;
        let leechers = swarm.len() as u32 - seeders;
        self.log.push(AnnounceRecord {
            at: now,
            transport,
            peer,
            info_hash,
            event,
            left,
            returned: others.len(),
        });
        (others, seeders, leechers)
    }

    /// Feeds the bytes a client sent so far on an HTTP connection. Returns the complete response
    /// (status line, headers, body) once the request head is complete, `None` while it is not.
    pub fn http_request(
        &mut self,
        now: Instant,
        rng: &mut CoreRng,
        source: IpAddr,
        buf: &[u8],
    ) -> Option<Vec<u8>> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let body = match req.parse(buf) {
            Ok(httparse::Status::Partial) => return None,
            Err(e) => failure(&format!("malformed request: {e}")),
            Ok(httparse::Status::Complete(_)) => {
                match self.http_announce(now, rng, source, req.method, req.path) {
                    Ok(body) => body,
                    Err(Refusal(m)) => failure(&m),
                }
            }
        };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        Some(out)
    }

    fn http_announce(
        &mut self,
        now: Instant,
        rng: &mut CoreRng,
        source: IpAddr,
        method: Option<&str>,
        path: Option<&str>,
    ) -> Result<Vec<u8>, Refusal> {
        if method != Some("GET") {
            return Err(Refusal(format!("method {method:?} is not GET")));
        }
        let path = path.ok_or_else(|| Refusal("no request target".into()))?;
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        if route != "/announce" {
            return Err(Refusal(format!("unknown path {route}")));
        }
        let mut params: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = String::from_utf8_lossy(&percent_decode(k)?).into_owned();
            params.insert(k, percent_decode(v)?);
        }
        let get = |k: &str| {
            params
                .get(k)
                .ok_or_else(|| Refusal(format!("missing `{k}`")))
        };
        let number = |k: &str| -> Result<u64, Refusal> {
            let v = get(k)?;
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Refusal(format!("`{k}` is not a number")))
        };
        let info_hash = InfoHash(
            get("info_hash")?
                .as_slice()
                .try_into()
                .map_err(|_| Refusal("`info_hash` is not 20 bytes".into()))?,
        );
        let _peer_id = PeerId(
            get("peer_id")?
                .as_slice()
                .try_into()
                .map_err(|_| Refusal("`peer_id` is not 20 bytes".into()))?,
        );
        let port =
            u16::try_from(number("port")?).map_err(|_| Refusal("`port` is out of range".into()))?;
        let left = number("left")?;
        let event = match params.get("event").map(Vec::as_slice) {
            None | Some(b"") => AnnounceEvent::None,
            Some(b"started") => AnnounceEvent::Started,
            Some(b"completed") => AnnounceEvent::Completed,
            Some(b"stopped") => AnnounceEvent::Stopped,
            Some(other) => {
                return Err(Refusal(format!(
                    "unknown event {:?}",
                    String::from_utf8_lossy(other)
                )))
            }
        };
        if params.get("compact").map(Vec::as_slice) != Some(b"1") {
            return Err(Refusal("only compact=1 is served".into()));
        }
        let num_want = match params.get("numwant") {
            Some(_) => Some(number("numwant")? as usize),
            None => None,
        };
        let peer = SocketAddr::new(source, port);
        let (peers, seeders, leechers) = self.announce(
            now,
            rng,
            Transport::Http,
            info_hash,
            peer,
            event,
            left,
            num_want,
        );
        let mut compact = Vec::with_capacity(peers.len() * 6);
        let mut compact6 = Vec::new();
        for p in &peers {
            match p {
                SocketAddr::V4(a) => {
                    compact.extend_from_slice(&a.ip().octets());
                    compact.extend_from_slice(&a.port().to_be_bytes());
                }
                SocketAddr::V6(a) => {
                    compact6.extend_from_slice(&a.ip().octets());
                    compact6.extend_from_slice(&a.port().to_be_bytes());
                }
            }
        }
        let mut reply = OwnedValue::dict()
            .with("interval", OwnedValue::Int(i64::from(self.interval)))
            .with("complete", OwnedValue::Int(i64::from(seeders)))
            .with("incomplete", OwnedValue::Int(i64::from(leechers)))
            .with("peers", OwnedValue::Bytes(compact));
        if !compact6.is_empty() {
            reply.insert("peers6", OwnedValue::Bytes(compact6));
        }
        Ok(reply.encode())
    }

    /// Answers one BEP 15 datagram from `from`; `None` for datagrams a tracker ignores.
    pub fn udp_datagram(
        &mut self,
        now: Instant,
        rng: &mut CoreRng,
        from: SocketAddr,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        let family = AddressFamily::of(&from);
        let reply = match UdpRequest::decode(data).ok()? {
            UdpRequest::Connect(c) => {
                let id: u64 = rng.random();
                self.udp_ids.insert(id);
                UdpResponse::Connect(ConnectResponse {
                    transaction_id: c.transaction_id,
                    connection_id: id,
                })
            }
            UdpRequest::Announce(a) if !self.udp_ids.contains(&a.connection_id) => {
                UdpResponse::Error(ErrorReply {
                    transaction_id: a.transaction_id,
                    message: "unknown connection id".into(),
                })
            }
            UdpRequest::Announce(a) => {
                let peer = SocketAddr::new(from.ip(), a.port);
                let num_want = usize::try_from(a.num_want).ok();
                let (peers, seeders, leechers) = self.announce(
                    now,
                    rng,
                    Transport::Udp,
                    a.info_hash,
                    peer,
                    a.event,
                    a.left,
                    num_want,
                );
                UdpResponse::Announce(AnnounceReply {
                    transaction_id: a.transaction_id,
                    interval: self.interval,
                    leechers,
                    seeders,
                    peers: peers
                        .into_iter()
                        .filter(|p| AddressFamily::of(p) == family)
                        .collect(),
                })
            }
            UdpRequest::Scrape(s) => UdpResponse::Error(ErrorReply {
                transaction_id: s.transaction_id,
                message: "scrape is not simulated".into(),
            }),
        };
        Some(reply.to_bytes(family))
    }
}

/// A bencoded `failure reason` body.
fn failure(message: &str) -> Vec<u8> {
    OwnedValue::dict()
        .with(
            "failure reason",
            OwnedValue::Bytes(message.as_bytes().to_vec()),
        )
        .encode()
}

/// Decodes `%XX` escapes (and `+` as a space) of a query component; a malformed escape is refused.
fn percent_decode(s: &str) -> Result<Vec<u8>, Refusal> {
    hyperblow_core::percent::decode_strict(s, true)
        .map_err(|i| Refusal(format!("bad percent escape at byte {i} of {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperblow_core::bencode::decode;
    use hyperblow_core::rng::seeded;

    fn get(ih: u8, port: u16, event: &str) -> Vec<u8> {
        let ih = [ih; 20];
        let enc: String = ih.iter().map(|b| format!("%{b:02X}")).collect();
        format!(
            "GET /announce?info_hash={enc}&peer_id=-HB0100-abcdefghijkl&port={port}&uploaded=0&downloaded=0&left=5&compact=1&event={event} HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn http_announce_returns_the_other_peers_compactly() {
        let mut t = Tracker::new(60);
        let mut rng = seeded(1);
        let now = Instant::from_secs(1);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let req = get(7, 6881, "started");
        assert!(t.http_request(now, &mut rng, a, &req[..20]).is_none());
        t.http_request(now, &mut rng, a, &req).unwrap();
        let reply = t
            .http_request(now, &mut rng, b, &get(7, 6882, "started"))
            .unwrap();
        let split = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let v = decode(&reply[split..]).unwrap();
        assert_eq!(v.get(b"interval").and_then(|v| v.as_int()), Some(60));
        assert_eq!(
            v.get(b"peers").and_then(|v| v.as_bytes()),
            Some(&[127, 0, 0, 1, 0x1a, 0xe1][..])
        );
        t.http_request(now, &mut rng, a, &get(7, 6881, "stopped"))
            .unwrap();
        assert_eq!(
            t.swarm(&InfoHash([7; 20])),
            vec!["127.0.0.2:6882".parse().unwrap()]
        );
    }

    #[test]
    fn http_refuses_garbage_with_a_failure_reason() {
        let mut t = Tracker::new(60);
        let mut rng = seeded(1);
        let r = t
            .http_request(
                Instant::ZERO,
                &mut rng,
                "127.0.0.1".parse().unwrap(),
                b"GET /x HTTP/1.1\r\n\r\n",
            )
            .unwrap();
        assert!(String::from_utf8_lossy(&r).contains("failure reason"));
    }
}

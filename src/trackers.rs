//! Small UDP (BEP 15) and HTTP (BEP 3/23/48) trackers written for tests: plain std threads and
//! sockets on 127.0.0.1, so end-to-end tests need nothing installed. They keep a real swarm per
//! info-hash (peers by announced port, seeders by `left == 0`, `completed` counts, `stopped`
//! removes), answer scrapes, log every announce, and stop when dropped or after a bounded lifetime.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyperblow_core::bencode::OwnedValue;
use hyperblow_core::tracker::udp::{
    AddressFamily, AnnounceReply, ConnectResponse, Request, Response, ScrapeReply,
};
use hyperblow_core::tracker::{AnnounceEvent, ScrapeStats};
use hyperblow_core::InfoHash;

/// How long a test tracker lives at most, whatever the test does.
pub const MAX_LIFETIME: Duration = Duration::from_secs(120);

/// The announce interval the trackers hand out, short so that tests see peers quickly.
pub const INTERVAL_SECS: u32 = 2;

/// One announce as the tracker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceLog {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The event.
    pub event: AnnounceEvent,
    /// The peer's address (source IP, announced port).
    pub peer: SocketAddr,
    /// Bytes left.
    pub left: u64,
}

#[derive(Debug, Default)]
struct Swarm {
    /// Peer address → bytes left.
    peers: BTreeMap<SocketAddr, u64>,
    completed: u32,
}

#[derive(Debug, Default)]
struct State {
    swarms: BTreeMap<InfoHash, Swarm>,
    log: Vec<AnnounceLog>,
    scrapes: u32,
}

impl State {
    /// Records an announce; returns (peers for the announcer, seeders, leechers).
    fn announce(&mut self, entry: AnnounceLog) -> (Vec<SocketAddr>, u32, u32) {
        let swarm = self.swarms.entry(entry.info_hash).or_default();
        match entry.event {
            AnnounceEvent::Stopped => {
                swarm.peers.remove(&entry.peer);
            }
            AnnounceEvent::Completed => {
                swarm.completed += 1;
                swarm.peers.insert(entry.peer, entry.left);
            }
            AnnounceEvent::Started | AnnounceEvent::None => {
                swarm.peers.insert(entry.peer, entry.left);
            }
        }
        let peers = swarm
            .peers
            .keys()
            .filter(|p| **p != entry.peer)
            .copied()
            .collect();
        let (seeders, leechers) = counts(swarm);
        self.log.push(entry);
        (peers, seeders, leechers)
    }

    fn scrape(&mut self, hash: &InfoHash) -> ScrapeStats {
        self.scrapes += 1;
        match self.swarms.get(hash) {
            Some(s) => {
                let (seeders, leechers) = counts(s);
                ScrapeStats {
                    seeders,
                    completed: s.completed,
                    leechers,
                }
            }
            None => ScrapeStats::default(),
        }
    }
}

fn counts(swarm: &Swarm) -> (u32, u32) {
    let seeders = swarm.peers.values().filter(|l| **l == 0).count();
    let leechers = swarm.peers.len() - seeders;
    (
        u32::try_from(seeders).unwrap_or(u32::MAX),
        u32::try_from(leechers).unwrap_or(u32::MAX),
    )
}

/// A running test tracker. Stops (and joins its thread) when dropped.
#[derive(Debug)]
pub struct TestTracker {
    addr: SocketAddr,
    udp: bool,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestTracker {
    /// Starts a UDP tracker on a free 127.0.0.1 port.
    pub fn udp() -> std::io::Result<TestTracker> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("test-udp-tracker".into())
            .spawn(move || udp_loop(&socket, &st, &sp))?;
        Ok(TestTracker {
            addr,
            udp: true,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Starts an HTTP tracker on a free 127.0.0.1 port.
    pub fn http() -> std::io::Result<TestTracker> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("test-http-tracker".into())
            .spawn(move || http_loop(&listener, &st, &sp))?;
        Ok(TestTracker {
            addr,
            udp: false,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The tracker's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The announce URL to put in a torrent.
    pub fn announce_url(&self) -> String {
        let scheme = if self.udp { "udp" } else { "http" };
        format!("{scheme}://{}/announce", self.addr)
    }

    /// Every announce so far, in order.
    pub fn announces(&self) -> Vec<AnnounceLog> {
        self.state.lock().map(|s| s.log.clone()).unwrap_or_default()
    }

    /// Scrape requests answered so far.
    pub fn scrapes(&self) -> u32 {
        self.state.lock().map(|s| s.scrapes).unwrap_or(0)
    }

    /// The counters a scrape of `hash` would give now.
    pub fn stats(&self, hash: &InfoHash) -> ScrapeStats {
        self.state
            .lock()
            .map(|s| match s.swarms.get(hash) {
                Some(sw) => {
                    let (seeders, leechers) = counts(sw);
                    ScrapeStats {
                        seeders,
                        completed: sw.completed,
                        leechers,
                    }
                }
                None => ScrapeStats::default(),
            })
            .unwrap_or_default()
    }
}

impl Drop for TestTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn udp_loop(socket: &UdpSocket, state: &Mutex<State>, stop: &AtomicBool) {
    let deadline = Instant::now() + MAX_LIFETIME;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some(data) = buf.get(..n) else { continue };
        let Ok(req) = Request::decode(data) else {
            continue;
        };
        let reply = match req {
            Request::Connect(c) => Response::Connect(ConnectResponse {
                transaction_id: c.transaction_id,
                connection_id: 0x0417_2710_1980_u64,
            }),
            Request::Announce(a) => {
                let peer = SocketAddr::new(from.ip(), a.port);
                let Ok(mut s) = state.lock() else { return };
                let (peers, seeders, leechers) = s.announce(AnnounceLog {
                    info_hash: a.info_hash,
                    event: a.event,
                    peer,
                    left: a.left,
                });
                Response::Announce(AnnounceReply {
                    transaction_id: a.transaction_id,
                    interval: INTERVAL_SECS,
                    leechers,
                    seeders,
                    peers,
                })
            }
            Request::Scrape(r) => {
                let Ok(mut s) = state.lock() else { return };
                Response::Scrape(ScrapeReply {
                    transaction_id: r.transaction_id,
                    stats: r.info_hashes.iter().map(|h| s.scrape(h)).collect(),
                })
            }
        };
        let _ = socket.send_to(&reply.to_bytes(AddressFamily::V4), from);
    }
}

fn http_loop(listener: &TcpListener, state: &Mutex<State>, stop: &AtomicBool) {
    let deadline = Instant::now() + MAX_LIFETIME;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, from)) => serve_http(stream, from, state),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Decodes `%XX` escapes (and `+` as a space) into bytes; a malformed escape stays as it is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    hyperblow_core::percent::decode_lenient(s, true)
}

fn serve_http(mut stream: TcpStream, from: SocketAddr, state: &Mutex<State>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req);
    let target = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut params: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params
            .entry(k.to_owned())
            .or_default()
            .push(percent_decode(v));
    }
    let first = |k: &str| params.get(k).and_then(|v| v.first()).cloned();
    let number = |k: &str| {
        first(k)
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
    };
    let hash = |v: &[u8]| <[u8; 20]>::try_from(v).ok().map(InfoHash);
    let body = if path.ends_with("/scrape") {
        let mut files = BTreeMap::new();
        let Ok(mut s) = state.lock() else { return };
        for h in params
            .get("info_hash")
            .into_iter()
            .flatten()
            .filter_map(|v| hash(v))
        {
            let st = s.scrape(&h);
            files.insert(
                h.as_bytes().to_vec(),
                OwnedValue::dict()
                    .with("complete", i64::from(st.seeders))
                    .with("downloaded", i64::from(st.completed))
                    .with("incomplete", i64::from(st.leechers)),
            );
        }
        OwnedValue::dict().with("files", files).encode()
    } else {
        match (
            first("info_hash").and_then(|v| hash(&v)),
            number("port").and_then(|p| u16::try_from(p).ok()),
        ) {
            (Some(info_hash), Some(port)) => {
                let event = match first("event").as_deref() {
                    Some(b"started") => AnnounceEvent::Started,
                    Some(b"completed") => AnnounceEvent::Completed,
                    Some(b"stopped") => AnnounceEvent::Stopped,
                    _ => AnnounceEvent::None,
                };
                let Ok(mut s) = state.lock() else { return };
                let (peers, seeders, leechers) = s.announce(AnnounceLog {
                    info_hash,
                    event,
                    peer: SocketAddr::new(from.ip(), port),
                    left: number("left").unwrap_or(0),
                });
                let mut compact = Vec::new();
                for p in peers {
                    if let SocketAddr::V4(v4) = p {
                        compact.extend_from_slice(&v4.ip().octets());
                        compact.extend_from_slice(&v4.port().to_be_bytes());
                    }
                }
                OwnedValue::dict()
                    .with("interval", i64::from(INTERVAL_SECS))
                    .with("complete", i64::from(seeders))
                    .with("incomplete", i64::from(leechers))
                    .with("peers", compact)
                    .encode()
            }
            _ => OwnedValue::dict()
                .with("failure reason", "missing info_hash or port")
                .encode(),
        }
    };
    let mut reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(&body);
    let _ = stream.write_all(&reply);
    let _ = stream.flush();
}

/// A loopback address with `port`, for tests that hand peers around.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%ff"), b"a b c\xff");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz"), b"%zz");
    }

    #[test]
    fn swarm_counts_seeders_leechers_and_completions() {
        let mut s = State::default();
        let h = InfoHash([7; 20]);
        let log = |port, event, left| AnnounceLog {
            info_hash: h,
            event,
            peer: loopback(port),
            left,
        };
        let (peers, _, _) = s.announce(log(1, AnnounceEvent::Started, 0));
        assert!(peers.is_empty());
        let (peers, seeders, leechers) = s.announce(log(2, AnnounceEvent::Started, 10));
        assert_eq!((peers, seeders, leechers), (vec![loopback(1)], 1, 1));
        s.announce(log(2, AnnounceEvent::Completed, 0));
        assert_eq!(
            s.scrape(&h),
            ScrapeStats {
                seeders: 2,
                completed: 1,
                leechers: 0
            }
        );
        s.announce(log(1, AnnounceEvent::Stopped, 0));
        assert_eq!(s.scrape(&h).seeders, 1);
    }
}

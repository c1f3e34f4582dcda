//! Engine tests on a virtual clock: an in-memory network joins engines (and fake trackers), and a
//! harness performs their jobs (SHA-1 for hashes, a map of pieces for writes and reads).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use sha1::{Digest, Sha1};

use super::*;
use crate::metainfo::TorrentBuilder;
use crate::tracker::udp::{
    AddressFamily, AnnounceReply, ConnectResponse, Request as UdpRequest, Response as UdpResponse,
};

// ===== the harness ==============================================================================

/// How a node serves reads: honestly or with every block corrupted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(dead_code)] // `Corrupt` is used by the ban tests that follow
enum Serve {
    Honest,
    Corrupt,
}

struct Node {
    engine: Engine,
    addr: SocketAddr,
    /// Verified pieces on "disk", per torrent.
    disk: BTreeMap<(TorrentId, u32), Bytes>,
    /// Torrents whose writes fail.
    fail_writes: BTreeSet<TorrentId>,
    serve: Serve,
    events: Vec<Event>,
    /// Bytes of every Hash job, to check nothing unverified was written.
    writes: u64,
}

/// A fake HTTP tracker: answers every request with `body`, recording the request lines.
struct FakeHttp {
    body: Vec<u8>,
    requests: Vec<String>,
}

/// A fake UDP tracker: grants connection ids and answers announces with `peers`.
struct FakeUdp {
    peers: Vec<SocketAddr>,
    announces: Vec<crate::tracker::AnnounceEvent>,
}

enum Action {
    Deliver {
        node: usize,
        conn: ConnId,
        data: Bytes,
        from: Option<(usize, ConnId)>,
    },
    Closed {
        node: usize,
        conn: ConnId,
    },
    JobDone {
        node: usize,
        id: JobId,
        result: JobResult,
    },
    Datagram {
        node: usize,
        from: SocketAddr,
        data: Vec<u8>,
    },
    Resolved {
        node: usize,
        id: ResolveId,
        result: Result<Vec<SocketAddr>, String>,
    },
}

struct Net {
    now: Instant,
    nodes: Vec<Node>,
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    http_conns: BTreeMap<(usize, ConnId), (SocketAddr, Vec<u8>)>,
    http: BTreeMap<SocketAddr, FakeHttp>,
    udp: BTreeMap<SocketAddr, FakeUdp>,
    /// Host names the fake resolver knows.
    hosts: BTreeMap<String, IpAddr>,
    queue: VecDeque<Action>,
    next_port: u16,
    /// Links whose bytes are dropped (a peer that went silent).
    mute: BTreeSet<(usize, ConnId)>,
    /// Jobs held back instead of performed (node, id, job).
    held_hash: bool,
    held: Vec<(usize, JobId, Job)>,
}

fn addr(i: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), port)
}

impl Net {
    fn new() -> Net {
        Net {
            now: Instant::from_secs(1000),
            nodes: Vec::new(),
            links: BTreeMap::new(),
            http_conns: BTreeMap::new(),
            http: BTreeMap::new(),
            udp: BTreeMap::new(),
            hosts: BTreeMap::new(),
            queue: VecDeque::new(),
            next_port: 40000,
            mute: BTreeSet::new(),
            held_hash: false,
            held: Vec::new(),
        }
    }

    fn add_node(&mut self, config: EngineConfig, seed: u64) -> usize {
        let i = self.nodes.len();
        let ip = 1 + i as u8;
        let config = EngineConfig {
            listen_port: 6881,
            ..config
        };
        self.nodes.push(Node {
            engine: Engine::new(config, seed, self.now),
            addr: addr(ip, 6881),
            disk: BTreeMap::new(),
            fail_writes: BTreeSet::new(),
            serve: Serve::Honest,
            events: Vec::new(),
            writes: 0,
        });
        i
    }

    fn node_at(&self, a: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == a)
    }

    /// Performs every output and queued action until nothing is left.
    fn settle(&mut self) {
        for _ in 0..2_000_000 {
            let mut did = false;
            for i in 0..self.nodes.len() {
                while let Some(o) = self.nodes[i].engine.poll_output() {
                    self.perform(i, o);
                    did = true;
                }
                while let Some(e) = self.nodes[i].engine.poll_event() {
                    self.nodes[i].events.push(e);
                }
            }
            if let Some(a) = self.queue.pop_front() {
                self.apply(a);
                did = true;
            }
            if !did {
                return;
            }
        }
        panic!("network did not settle");
    }

    fn perform(&mut self, i: usize, o: Output) {
        let now = self.now;
        match o {
            Output::Connect { conn, addr: to } => {
                if let Some(j) = self.node_at(to) {
                    let port = self.next_port;
                    self.next_port += 1;
                    let remote = SocketAddr::new(self.nodes[i].addr.ip(), port);
                    match self.nodes[j].engine.handle_incoming(now, remote) {
                        Some(jc) => {
                            self.links.insert((i, conn), (j, jc));
                            self.links.insert((j, jc), (i, conn));
                            self.nodes[i].engine.handle_connected(now, conn);
                        }
                        None => self.nodes[i]
                            .engine
                            .handle_connect_failed(now, conn, "refused"),
                    }
                } else if self.http.contains_key(&to) {
                    self.http_conns.insert((i, conn), (to, Vec::new()));
                    self.nodes[i].engine.handle_connected(now, conn);
                } else {
                    self.nodes[i]
                        .engine
                        .handle_connect_failed(now, conn, "connection refused");
                }
            }
            Output::Send { conn, data } => {
                if let Some(&(j, jc)) = self.links.get(&(i, conn)) {
                    if !self.mute.contains(&(i, conn)) {
                        self.queue.push_back(Action::Deliver {
                            node: j,
                            conn: jc,
                            data,
                            from: Some((i, conn)),
                        });
                    } else {
                        let n = data.len();
                        self.nodes[i].engine.handle_flushed(now, conn, n);
                    }
                } else if let Some((to, buf)) = self.http_conns.get_mut(&(i, conn)) {
                    buf.extend_from_slice(&data);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let request = String::from_utf8_lossy(buf).into_owned();
                        let line = request.lines().next().unwrap_or("").to_owned();
                        let fake = self.http.get_mut(to).expect("fake tracker");
                        fake.requests.push(line);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                            fake.body.len()
                        );
                        let mut bytes = reply.into_bytes();
                        bytes.extend_from_slice(&fake.body);
                        self.queue.push_back(Action::Deliver {
                            node: i,
                            conn,
                            data: bytes.into(),
                            from: None,
                        });
                        self.queue.push_back(Action::Closed { node: i, conn });
                    }
                }
            }
            Output::Close { conn } => {
                self.http_conns.remove(&(i, conn));
                if let Some((j, jc)) = self.links.remove(&(i, conn)) {
                    self.links.remove(&(j, jc));
                    self.queue.push_back(Action::Closed { node: j, conn: jc });
                }
            }
            Output::SendDatagram { to, data } => {
                let from = self.nodes[i].addr;
                if let Some(fake) = self.udp.get_mut(&to) {
                    if let Some(reply) = fake.answer(&data) {
                        let _ = from;
                        self.queue.push_back(Action::Datagram {
                            node: i,
                            from: to,
                            data: reply,
                        });
                    }
                }
            }
            Output::Resolve { id, host, port } => {
                let result = match self.hosts.get(&host) {
                    Some(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
                    None => Err(format!("unknown host {host}")),
                };
                self.queue.push_back(Action::Resolved {
                    node: i,
                    id,
                    result,
                });
            }
            Output::Job { id, job } => {
                if self.held_hash && matches!(job, Job::Hash { .. }) {
                    self.held.push((i, id, job));
                    return;
                }
                let result = self.run_job(i, &job);
                self.queue.push_back(Action::JobDone {
                    node: i,
                    id,
                    result,
                });
            }
        }
    }

    fn run_job(&mut self, i: usize, job: &Job) -> JobResult {
        let node = &mut self.nodes[i];
        match job {
            Job::Hash { blocks, .. } => {
                let mut h = Sha1::new();
                for b in blocks {
                    h.update(b);
                }
                JobResult::Hashed(h.finalize().into())
            }
            Job::Write {
                torrent,
                piece,
                blocks,
            } => {
                if node.fail_writes.contains(torrent) {
                    return JobResult::Failed(StorageFailure {
                        kind: StorageFailureKind::NoSpace,
                        message: format!("writing piece {piece}: no space left on device"),
                    });
                }
                let data: Vec<u8> = blocks.iter().flat_map(|b| b.iter().copied()).collect();
                node.writes += data.len() as u64;
                node.disk.insert((*torrent, *piece), data.into());
                JobResult::Written
            }
            Job::Read {
                torrent,
                piece,
                offset,
                length,
            } => {
                let Some(p) = node.disk.get(&(*torrent, *piece)) else {
                    return JobResult::Failed(StorageFailure {
                        kind: StorageFailureKind::NotFound,
                        message: format!("piece {piece} is not on disk"),
                    });
                };
                let (o, l) = (*offset as usize, *length as usize);
                let Some(slice) = p.get(o..o + l) else {
                    return JobResult::Failed(StorageFailure {
                        kind: StorageFailureKind::Other,
                        message: format!("read past piece {piece}"),
                    });
                };
                match node.serve {
                    Serve::Honest => JobResult::Read(p.slice(o..o + l)),
                    Serve::Corrupt => {
                        let mut v = slice.to_vec();
                        for b in v.iter_mut() {
                            *b ^= 0x5a;
                        }
                        JobResult::Read(v.into())
                    }
                }
            }
        }
    }

    fn apply(&mut self, a: Action) {
        let now = self.now;
        match a {
            Action::Deliver {
                node,
                conn,
                data,
                from,
            } => {
                let open = from.is_none()
                    || self.links.contains_key(&(node, conn))
                    || self.http_conns.contains_key(&(node, conn));
                if open {
                    self.nodes[node].engine.handle_read(now, conn, &data);
                }
                if let Some((i, c)) = from {
                    self.nodes[i].engine.handle_flushed(now, c, data.len());
                }
            }
            Action::Closed { node, conn } => {
                self.http_conns.remove(&(node, conn));
                self.nodes[node].engine.handle_closed(now, conn)
            }
            Action::JobDone { node, id, result } => {
                self.nodes[node].engine.handle_job_done(now, id, result)
            }
            Action::Datagram { node, from, data } => {
                self.nodes[node].engine.handle_datagram(now, from, &data)
            }
            Action::Resolved { node, id, result } => {
                self.nodes[node].engine.handle_resolved(now, id, result)
            }
        }
    }

    /// Settles, then steps the clock to the next deadline, until `done` or `limit` of virtual time.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.settle();
            if done(self) {
                return true;
            }
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.engine.poll_timeout())
                .min();
            let Some(next) = next else {
                return false;
            };
            if next > end {
                return false;
            }
            assert!(
                next >= self.now || !self.queue.is_empty(),
                "poll_timeout {next:?} is in the past (now {:?})",
                self.now
            );
            if next > self.now {
                self.now = next;
            }
            let now = self.now;
            for n in &mut self.nodes {
                if n.engine.poll_timeout().is_some_and(|t| t <= now) {
                    n.engine.handle_timeout(now);
                }
            }
        }
    }

    #[allow(dead_code)]
    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(d, |_| false);
        if self.now < end {
            self.now = end;
        }
    }

    fn completed(&self, node: usize, t: TorrentId) -> bool {
        self.nodes[node]
            .events
            .contains(&Event::TorrentCompleted(t))
    }
}

impl FakeUdp {
    fn answer(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        match UdpRequest::decode(data).ok()? {
            UdpRequest::Connect(c) => Some(
                UdpResponse::Connect(ConnectResponse {
                    transaction_id: c.transaction_id,
                    connection_id: 0x1234_5678_9abc_def0,
                })
                .to_bytes(AddressFamily::V4),
            ),
            UdpRequest::Announce(a) => {
                self.announces.push(a.event);
                Some(
                    UdpResponse::Announce(AnnounceReply {
                        transaction_id: a.transaction_id,
                        interval: 1800,
                        leechers: 1,
                        seeders: 1,
                        peers: self.peers.clone(),
                    })
                    .to_bytes(AddressFamily::V4),
                )
            }
            UdpRequest::Scrape(_) => None,
        }
    }
}

/// A torrent over `files` with content from a fixed pattern; returns it and its content.
fn make_torrent(
    name: &str,
    files: &[(&str, u64)],
    piece_length: u32,
    trackers: Vec<Vec<String>>,
) -> (Metainfo, Vec<u8>) {
    let list: Vec<(Vec<String>, u64)> = files
        .iter()
        .map(|(p, l)| (vec![(*p).to_owned()], *l))
        .collect();
    let mut hasher = TorrentBuilder::multi_file(name, list)
        .piece_length(piece_length)
        .trackers(trackers)
        .start()
        .expect("builder");
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    let mut rng = seeded(total ^ u64::from(piece_length));
    let content: Vec<u8> = (0..total).map(|_| rng.random::<u8>()).collect();
    hasher.update(&content).expect("content");
    let built = hasher.finish().expect("finish");
    (Metainfo::from_bytes(&built.bytes).expect("parse"), content)
}

/// Puts the whole content on a node's disk for torrent `t`.
fn load_disk(node: &mut Node, t: TorrentId, content: &[u8], piece_length: u32) {
    for (i, chunk) in content.chunks(piece_length as usize).enumerate() {
        node.disk
            .insert((t, i as u32), Bytes::copy_from_slice(chunk));
    }
}

/// The content a node has for `t`, pieces concatenated (missing pieces absent).
fn disk_content(node: &Node, t: TorrentId) -> Vec<u8> {
    node.disk
        .range((t, 0)..=(t, u32::MAX))
        .flat_map(|(_, b)| b.iter().copied())
        .collect()
}

fn add(meta: &Metainfo, have: Option<Bitfield>, peers: Vec<SocketAddr>) -> AddTorrent {
    AddTorrent {
        metainfo: meta.clone(),
        have,
        wanted_files: None,
        paused: false,
        peers,
    }
}

const FILES: &[(&str, u64)] = &[("a.bin", 100_000), ("b.bin", 7), ("c.bin", 150_000)];
const PL: u32 = 32 * 1024;

/// A seeder (node 0) and a leecher (node 1) of the same torrent, not yet connected.
fn seed_and_leech(trackers: Vec<Vec<String>>) -> (Net, Metainfo, Vec<u8>, TorrentId, TorrentId) {
    let (meta, content) = make_torrent("multi", FILES, PL, trackers);
    let mut net = Net::new();
    let s = net.add_node(EngineConfig::default(), 1);
    let l = net.add_node(EngineConfig::default(), 2);
    let pieces = meta.info.layout().piece_count();
    let now = net.now;
    let ts = net.nodes[s]
        .engine
        .add_torrent(now, add(&meta, Some(Bitfield::full(pieces)), vec![]))
        .expect("add seed");
    load_disk(&mut net.nodes[s], ts, &content, PL);
    let tl = net.nodes[l]
        .engine
        .add_torrent(now, add(&meta, None, vec![]))
        .expect("add leech");
    (net, meta, content, ts, tl)
}

// ===== tests ====================================================================================

#[test]
fn leech_from_one_manually_added_seeder() {
    let (mut net, _meta, content, ts, tl) = seed_and_leech(vec![]);
    let seeder = net.nodes[0].addr;
    let now = net.now;
    net.nodes[1].engine.add_peer(now, tl, seeder);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    let st = net.nodes[1]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    assert_eq!(st.state, TorrentState::Seeding);
    assert_eq!(st.have_bytes, content.len() as u64);
    assert!((st.progress() - 1.0).abs() < 1e-9);
    assert!(st.files.iter().all(|f| f.have == f.length));
    assert_eq!(st.downloaded, content.len() as u64);
    let seed_stats = net.nodes[0]
        .engine
        .torrent_stats(net.now, ts)
        .expect("stats");
    assert_eq!(seed_stats.uploaded, content.len() as u64);
    // Every byte written was hashed first: the leecher wrote exactly the content once.
    assert_eq!(net.nodes[1].writes, content.len() as u64);
    let verified = net.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::PieceVerified { .. }))
        .count();
    assert_eq!(verified as u32, content.len().div_ceil(PL as usize) as u32);
}

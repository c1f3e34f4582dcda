//! Engine tests on a virtual clock: an in-memory network joins engines (and fake trackers), and a
//! harness performs their jobs (SHA-1 for hashes, a map of pieces for writes and reads).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::metainfo::TorrentBuilder;
use crate::testkit::{fire_due, next_deadline, Hosts, MemDisk, OriginUse, WireLog};
use crate::tracker::udp::{
    AddressFamily, AnnounceReply, ConnectResponse, Request as UdpRequest, Response as UdpResponse,
};
use crate::wire::{Decoded, Handshake, Message, Reserved, DEFAULT_MAX_FRAME_LEN};

// ===== the harness ==============================================================================

/// How a node serves reads: honestly or with every block corrupted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Serve {
    Honest,
    Corrupt,
}

struct Node {
    engine: Engine,
    addr: SocketAddr,
    /// Verified pieces on "disk", per torrent (with the failures a test injects).
    disk: MemDisk<TorrentId>,
    events: Vec<Event>,
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
    hosts: Hosts,
    queue: VecDeque<Action>,
    next_port: u16,
    /// Links whose bytes are withheld (a peer that went silent) until `unmute`.
    mute: BTreeSet<(usize, ConnId)>,
    withheld: Vec<Action>,
    /// Jobs held back instead of performed (node, id, job).
    held_hash: bool,
    held: Vec<(usize, JobId, Job)>,
    /// Nodes whose outgoing peer messages are decoded into `sent`.
    tap: BTreeSet<usize>,
    wire: WireLog<(usize, ConnId)>,
    sent: Vec<(usize, SocketAddr, Message)>,
    /// Every `Connect` a node asked for.
    connects: Vec<(usize, SocketAddr)>,
    tls_dials: Vec<(usize, String)>,
    /// Node-to-node uTP datagrams dropped, per thousand (`tests/utp.rs`), and how many were.
    utp_loss: u32,
    utp_dropped: u64,
    loss_rng: CoreRng,
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
            hosts: Hosts::new(),
            queue: VecDeque::new(),
            next_port: 40000,
            mute: BTreeSet::new(),
            withheld: Vec::new(),
            held_hash: false,
            held: Vec::new(),
            tap: BTreeSet::new(),
            wire: WireLog::new(DEFAULT_MAX_FRAME_LEN),
            sent: Vec::new(),
            connects: Vec::new(),
            tls_dials: Vec::new(),
            utp_loss: 0,
            utp_dropped: 0,
            loss_rng: seeded(0x1055),
        }
    }

    /// Adds `meta` to node `node` as a seed (every piece verified, the content on its disk).
    fn add_seed(
        &mut self,
        node: usize,
        meta: &Metainfo,
        content: &[u8],
        piece_length: u32,
    ) -> TorrentId {
        let pieces = meta.info.layout().piece_count();
        let t = self.nodes[node]
            .engine
            .add_torrent(self.now, add(meta, Some(Bitfield::full(pieces)), vec![]))
            .expect("add seed");
        self.nodes[node].disk.load(t, content, piece_length);
        t
    }

    /// Adds `meta` to node `node` as a leecher (nothing on disk) that knows `peers`.
    fn add_leech(&mut self, node: usize, meta: &Metainfo, peers: Vec<SocketAddr>) -> TorrentId {
        self.nodes[node]
            .engine
            .add_torrent(self.now, add(meta, None, peers))
            .expect("add leech")
    }

    /// A fake HTTP tracker at `at`, known to the resolver as `host`, that answers every
    /// announce with `peers`.
    fn serve_tracker(&mut self, host: &str, at: SocketAddr, peers: &[SocketAddr]) {
        self.hosts.insert(host, at.ip());
        self.http.insert(
            at,
            FakeHttp {
                body: http_body(peers),
                requests: Vec::new(),
            },
        );
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
            disk: MemDisk::new(),
            events: Vec::new(),
        });
        i
    }

    fn node_at(&self, a: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == a)
    }

    /// Performs every output and queued action until nothing is left.
    fn settle(&mut self) {
        self.settle_until(&|_| false);
    }

    /// Like `settle`, but stops as soon as `stop` holds (checked after every step).
    fn settle_until(&mut self, stop: &dyn Fn(&Net) -> bool) -> bool {
        for _ in 0..2_000_000 {
            if stop(self) {
                return true;
            }
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
                return stop(self);
            }
        }
        panic!("network did not settle");
    }

    fn perform(&mut self, i: usize, o: Output) {
        let now = self.now;
        match o {
            Output::Connect {
                conn,
                addr: to,
                tls,
            } => {
                self.connects.push((i, to));
                // TLS is the driver's: here it is transparent, and only the request for it is noted.
                if let Some(host) = tls {
                    self.tls_dials.push((i, host));
                }
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
                    if self.tap.contains(&i) {
                        let to = self.nodes[j].addr;
                        let sent = &mut self.sent;
                        self.wire.feed((i, conn), &data, |m| {
                            if let Decoded::Message(m) = m {
                                sent.push((i, to, m));
                            }
                        });
                    }
                    let a = Action::Deliver {
                        node: j,
                        conn: jc,
                        data,
                        from: Some((i, conn)),
                    };
                    if self.mute.contains(&(i, conn)) {
                        self.withheld.push(a);
                    } else {
                        self.queue.push_back(a);
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
                        self.queue.push_back(Action::Datagram {
                            node: i,
                            from: to,
                            data: reply,
                        });
                    }
                } else if let Some(j) = self.node_at(to) {
                    if self.utp_loss > 0
                        && classify_datagram(&data) == DatagramKind::Utp
                        && self.loss_rng.random_range(0..1000) < self.utp_loss
                    {
                        self.utp_dropped += 1;
                        return;
                    }
                    // Node to node (the DHT, uTP): the UDP socket shares the TCP listener's address.
                    self.queue.push_back(Action::Datagram {
                        node: j,
                        from,
                        data: data.to_vec(),
                    });
                }
            }
            Output::Resolve { id, host, port } => {
                let result = self.hosts.resolve(&host, port);
                self.queue.push_back(Action::Resolved {
                    node: i,
                    id,
                    result,
                });
            }
            Output::Job { id, job } => {
                if self.held_hash && matches!(job, Job::VerifyWrite { .. }) {
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
        let (Job::VerifyWrite { torrent, .. } | Job::Read { torrent, .. }) = job;
        self.nodes[i]
            .disk
            .run(Some(*torrent), job, None, OriginUse::default())
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
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Net) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if self.settle_until(&done) {
                return true;
            }
            let Some(next) = next_deadline(self.nodes.iter().map(|n| &n.engine)) else {
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
            fire_due(self.now, self.nodes.iter_mut().map(|n| &mut n.engine));
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(d, |_| false);
        if self.now < end {
            self.now = end;
        }
    }

    fn unmute(&mut self) {
        self.mute.clear();
        self.queue.extend(self.withheld.drain(..));
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
            UdpRequest::Scrape(r) => Some(
                UdpResponse::Scrape(crate::tracker::udp::ScrapeReply {
                    transaction_id: r.transaction_id,
                    stats: r
                        .info_hashes
                        .iter()
                        .map(|_| crate::tracker::ScrapeStats {
                            seeders: 7,
                            completed: 9,
                            leechers: 3,
                        })
                        .collect(),
                })
                .to_bytes(AddressFamily::V4),
            ),
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
    node.disk.load(t, content, piece_length);
}

/// The content a node has for `t`, pieces concatenated (missing pieces absent).
fn disk_content(node: &Node, t: TorrentId) -> Vec<u8> {
    node.disk.content(t)
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
    let ts = net.add_seed(s, &meta, &content, PL);
    let tl = net.add_leech(l, &meta, vec![]);
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
    assert_eq!(net.nodes[1].disk.written, content.len() as u64);
    let verified = net.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::PieceVerified { .. }))
        .count();
    assert_eq!(verified as u32, content.len().div_ceil(PL as usize) as u32);
}

fn compact(peers: &[SocketAddr]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in peers {
        if let SocketAddr::V4(v4) = p {
            out.extend_from_slice(&v4.ip().octets());
            out.extend_from_slice(&v4.port().to_be_bytes());
        }
    }
    out
}

fn http_body(peers: &[SocketAddr]) -> Vec<u8> {
    let c = compact(peers);
    let mut body = format!("d8:intervali1800e5:peers{}:", c.len()).into_bytes();
    body.extend_from_slice(&c);
    body.push(b'e');
    body
}

/// A leecher completes from a seeder it learns of from a fake tracker at
/// `{scheme}://tracker.test:{port}`, which saw a `started` announce; returns the network, the
/// tracker's address and the leecher's torrent.
fn leech_through_tracker(scheme: &str, port: u16) -> (Net, SocketAddr, TorrentId) {
    let url = format!("{scheme}://tracker.test:{port}/announce");
    let (mut net, _meta, content, _ts, tl) = seed_and_leech(vec![vec![url]]);
    let tracker = addr(100, port);
    let seeder = net.nodes[0].addr;
    net.serve_tracker("tracker.test", tracker, &[seeder]);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    let reqs = &net.http[&tracker].requests;
    assert!(reqs.iter().any(|r| r.contains("event=started")), "{reqs:?}");
    (net, tracker, tl)
}

#[test]
fn leech_through_a_fake_http_tracker() {
    let (net, tracker, tl) = leech_through_tracker("http", 8080);
    let reqs = &net.http[&tracker].requests;
    assert!(
        reqs.iter().any(|r| r.contains("event=completed")),
        "{reqs:?}"
    );
    assert!(net.nodes[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::TrackerReply { peers: 1, .. })));
    // The tracker shows up in the stats.
    let st = net.nodes[1]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    assert_eq!(st.trackers.len(), 1);
}

#[test]
fn https_tracker_connections_ask_the_driver_for_tls_with_the_host_name() {
    let (net, tracker, _tl) = leech_through_tracker("https", 8443);
    // Every connection to the tracker asked for TLS with its name; none to a peer did.
    let to_tracker = net.connects.iter().filter(|(_, a)| *a == tracker).count();
    assert!(to_tracker >= 2, "both nodes announce");
    assert_eq!(net.tls_dials.len(), to_tracker, "{:?}", net.tls_dials);
    assert!(net.tls_dials.iter().all(|(_, h)| h == "tracker.test"));
}

#[test]
fn leech_through_a_fake_udp_tracker() {
    let url = "udp://udp.test:6969/announce".to_owned();
    let (mut net, _meta, content, _ts, tl) = seed_and_leech(vec![vec![url]]);
    let tracker = addr(101, 6969);
    net.hosts.insert("udp.test", tracker.ip());
    let seeder = net.nodes[0].addr;
    net.udp.insert(
        tracker,
        FakeUdp {
            peers: vec![seeder],
            announces: Vec::new(),
        },
    );
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    let events = &net.udp[&tracker].announces;
    use crate::tracker::AnnounceEvent as A;
    assert!(events.contains(&A::Started), "{events:?}");
    assert!(events.contains(&A::Completed), "{events:?}");
    // Shutdown sends `stopped` and finishes.
    let now = net.now;
    net.nodes[1].engine.shutdown(now);
    net.nodes[0].engine.shutdown(now);
    assert!(net.run_until(Duration::from_secs(10), |n| n.nodes[1]
        .engine
        .is_shut_down()));
    assert!(net.udp[&tracker].announces.contains(&A::Stopped));
}

#[test]
fn unreachable_tracker_is_reported_and_does_not_stall_manual_peers() {
    let url = "http://nowhere.test/announce".to_owned();
    let (mut net, _meta, content, _ts, tl) = seed_and_leech(vec![vec![url]]);
    let seeder = net.nodes[0].addr;
    let now = net.now;
    net.nodes[1].engine.add_peer(now, tl, seeder);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    assert!(net.nodes[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::TrackerError { message, .. } if message.contains("resolve"))));
}

/// A seeder, and a leecher that knows several seeders; node 0 is the one being tested against.
fn swarm(seeders: usize, serve: &[Serve]) -> (Net, Vec<u8>, TorrentId, Vec<SocketAddr>) {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let mut net = Net::new();
    let now = net.now;
    let mut addrs = Vec::new();
    for k in 0..seeders {
        let s = net.add_node(EngineConfig::default(), 10 + k as u64);
        net.add_seed(s, &meta, &content, PL);
        net.nodes[s].disk.corrupt_reads = serve.get(k) == Some(&Serve::Corrupt);
        addrs.push(net.nodes[s].addr);
    }
    // The leecher dials plain, so that a test can tap its messages (the seeders accept both kinds).
    let leech_config = EngineConfig {
        encryption: crate::mse::Policy::Disable,
        ..EngineConfig::default()
    };
    let l = net.add_node(leech_config, 99);
    let tl = net.nodes[l]
        .engine
        .add_torrent(now, add(&meta, None, addrs.clone()))
        .expect("add leech");
    (net, content, tl, addrs)
}

#[test]
fn corrupt_peer_is_banned_and_download_completes_from_honest_peer() {
    let (mut net, content, tl, addrs) = swarm(2, &[Serve::Corrupt, Serve::Honest]);
    let l = 2;
    assert!(net.run_until(Duration::from_secs(120), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
    let bans: Vec<&Event> = net.nodes[l]
        .events
        .iter()
        .filter(|e| matches!(e, Event::PeerBanned { .. }))
        .collect();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert!(matches!(bans[0], Event::PeerBanned { addr, .. } if *addr == addrs[0]));
    assert!(net.nodes[l]
        .events
        .iter()
        .any(|e| matches!(e, Event::PieceFailed { .. })));
    // Never reconnected: one dial to the liar in the whole run, even after a long while.
    net.run_for(Duration::from_secs(600));
    let dials = net
        .connects
        .iter()
        .filter(|(i, a)| *i == l && *a == addrs[0])
        .count();
    assert_eq!(dials, 1);
}

#[test]
fn endgame_cancels_duplicate_requests() {
    let (mut net, content, tl, _addrs) = swarm(3, &[]);
    let l = 3;
    net.tap.insert(l);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
    let cancels = net
        .sent
        .iter()
        .filter(|(i, _, m)| *i == l && matches!(m, Message::Cancel(_)))
        .count();
    assert!(cancels > 0, "no cancel was sent in endgame");
    // Duplicates are bounded: requests sent minus blocks needed is what endgame added.
    let requests = net
        .sent
        .iter()
        .filter(|(i, _, m)| *i == l && matches!(m, Message::Request(_)))
        .count();
    let blocks = content.len().div_ceil(16 * 1024);
    assert!(
        requests >= blocks && requests <= blocks * 3,
        "{requests} requests for {blocks} blocks"
    );
}

#[test]
fn silent_peer_times_out_is_snubbed_and_download_completes_when_it_wakes() {
    let (mut net, content, tl, addrs) = swarm(1, &[]);
    let l = 1;
    // Silence the seeder once data flows (the first piece is verified; later blocks are withheld).
    let connected = |n: &Net| {
        n.nodes[l]
            .events
            .iter()
            .any(|e| matches!(e, Event::PieceVerified { .. }))
    };
    assert!(net.run_until(Duration::from_secs(10), connected));
    let seeder_side: Vec<(usize, ConnId)> =
        net.links.keys().filter(|(i, _)| *i == 0).copied().collect();
    net.mute.extend(seeder_side);
    let start = net.now;
    // After the snub timeout (60 s) the peer is snubbed and its requests timed out.
    net.run_for(Duration::from_secs(90));
    let st = net.nodes[l]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    let p = st
        .peer_list
        .iter()
        .find(|p| p.addr == addrs[0])
        .expect("still connected");
    assert!(p.snubbed, "{p:?}");
    assert!(
        p.requests <= 1,
        "queue depth drops to one while snubbed: {p:?}"
    );
    assert!(!net.completed(l, tl));
    // It wakes up: late blocks are accepted or dropped, timed-out blocks are asked again.
    net.unmute();
    assert!(net.run_until(Duration::from_secs(120), |n| n.completed(l, tl)));
    assert!(net.now >= start + Duration::from_secs(60));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
}

// ----- one engine against a hand-driven peer ------------------------------------------------------

/// One engine whose peer is played by the test, message by message.
struct Raw {
    engine: Engine,
    now: Instant,
    disk: MemDisk<TorrentId>,
    wire: WireLog<ConnId>,
    got: Vec<(ConnId, Decoded)>,
    closed: Vec<ConnId>,
    events: Vec<Event>,
    /// Addresses the engine asked to connect to.
    dials: Vec<SocketAddr>,
}

impl Raw {
    fn new() -> Raw {
        let now = Instant::from_secs(50);
        // Raw peers speak plain BitTorrent (their bytes are decoded as wire messages), so the engine
        // dials them without the MSE handshake; engine/tests/mse.rs covers encryption.
        let config = EngineConfig {
            encryption: crate::mse::Policy::Disable,
            ..EngineConfig::default()
        };
        Raw {
            engine: Engine::new(config, 7, now),
            now,
            disk: MemDisk::new(),
            wire: WireLog::new(DEFAULT_MAX_FRAME_LEN),
            got: Vec::new(),
            closed: Vec::new(),
            events: Vec::new(),
            dials: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Send { conn, data } => {
                    let got = &mut self.got;
                    self.wire.feed(conn, &data, |m| got.push((conn, m)));
                    self.engine.handle_flushed(self.now, conn, data.len());
                }
                Output::Close { conn } => self.closed.push(conn),
                Output::Job { id, job } => {
                    let (Job::VerifyWrite { torrent, .. } | Job::Read { torrent, .. }) = &job;
                    let result = self
                        .disk
                        .run(Some(*torrent), &job, None, OriginUse::default());
                    self.engine.handle_job_done(self.now, id, result);
                }
                Output::Connect { addr, .. } => self.dials.push(addr),
                Output::SendDatagram { .. } | Output::Resolve { .. } => {}
            }
        }
        while let Some(e) = self.engine.poll_event() {
            self.events.push(e);
        }
    }

    /// A raw engine with `config` (seed 7).
    fn with_config(config: EngineConfig) -> Raw {
        let mut raw = Raw::new();
        raw.engine = Engine::new(config, 7, raw.now);
        raw
    }

    /// Adds `meta` with nothing on disk and no peers.
    fn add_leech(&mut self, meta: &Metainfo) -> TorrentId {
        let t = self
            .engine
            .add_torrent(self.now, add(meta, None, vec![]))
            .expect("add");
        self.drain();
        t
    }

    /// Adds `meta` as a full seed with `content` on disk.
    fn add_seed(&mut self, meta: &Metainfo, content: &[u8]) -> TorrentId {
        let pieces = meta.info.layout().piece_count();
        let t = self
            .engine
            .add_torrent(self.now, add(meta, Some(Bitfield::full(pieces)), vec![]))
            .expect("add");
        self.disk.load(t, content, PL);
        self.drain();
        t
    }

    /// A hand-driven peer connects in from `from` and sends its handshake and then `then` in one
    /// read; the engine's answers are drained.
    fn connect_in(
        &mut self,
        from: SocketAddr,
        info_hash: InfoHash,
        peer_id: [u8; 20],
        reserved: Reserved,
        then: &[Message],
    ) -> ConnId {
        let conn = self
            .engine
            .handle_incoming(self.now, from)
            .expect("accepted");
        let hs = Handshake::new(info_hash, PeerId(peer_id), reserved);
        let mut buf = bytes::BytesMut::from(&hs.to_bytes()[..]);
        for m in then {
            m.encode(&mut buf).expect("encode");
        }
        self.engine.handle_read(self.now, conn, &buf);
        self.drain();
        conn
    }

    fn send(&mut self, conn: ConnId, msgs: &[Message]) {
        let mut buf = bytes::BytesMut::new();
        for m in msgs {
            m.encode(&mut buf).expect("encode");
        }
        self.engine.handle_read(self.now, conn, &buf);
        self.drain();
    }

    /// Messages received on `conn` since the last call.
    fn take(&mut self, conn: ConnId) -> Vec<Message> {
        let mut out = Vec::new();
        self.got.retain(|(c, d)| {
            if *c != conn {
                return true;
            }
            if let Decoded::Message(m) = d {
                out.push(m.clone());
            }
            false
        });
        out
    }
}

fn requests(msgs: &[Message]) -> BTreeSet<(u32, u32)> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Request(r) => Some((r.index, r.begin)),
            _ => None,
        })
        .collect()
}

fn bitfield_of(pieces: u32, have: &[u32]) -> Bytes {
    let mut b = Bitfield::new(pieces);
    for p in have {
        b.set(*p);
    }
    Bytes::copy_from_slice(b.as_bytes())
}

fn raw_leecher(reserved: Reserved) -> (Raw, Metainfo, Vec<u8>, TorrentId, ConnId) {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let mut raw = Raw::new();
    let t = raw.add_leech(&meta);
    // Handshake, bitfield and have in a single read.
    let pieces = meta.info.layout().piece_count();
    let conn = raw.connect_in(
        addr(200, 5000),
        meta.info_hash(),
        *b"-XX0001-abcdefghijkl",
        reserved,
        &[
            Message::Bitfield(bitfield_of(pieces, &[0])),
            Message::Have { piece: 1 },
        ],
    );
    (raw, meta, content, t, conn)
}

fn block_msg(content: &[u8], piece: u32, begin: u32, len: u32) -> Message {
    let start = piece as usize * PL as usize + begin as usize;
    Message::Piece {
        index: piece,
        begin,
        block: Bytes::copy_from_slice(&content[start..start + len as usize]),
    }
}

#[test]
fn coalesced_handshake_bitfield_have_then_choke_without_fast_extension() {
    let (mut raw, _meta, content, t, conn) = raw_leecher(Reserved::empty());
    assert!(matches!(raw.got.first(), Some((_, Decoded::Handshake(_)))));
    let msgs = raw.take(conn);
    assert!(msgs.contains(&Message::Interested), "{msgs:?}");
    let st = raw.engine.torrent_stats(raw.now, t).expect("stats");
    assert_eq!(st.peer_list.len(), 1);
    assert_eq!(st.peer_list[0].pieces, 2, "bitfield and have both counted");
    // Unchoke: requests (the initial queue depth) for pieces 0 and 1 only.
    raw.send(conn, &[Message::Unchoke]);
    let first = requests(&raw.take(conn));
    assert!(
        !first.is_empty() && first.iter().all(|(p, _)| *p <= 1),
        "{first:?}"
    );
    // Choke without the fast extension voids them; after the next unchoke they are asked again.
    raw.send(conn, &[Message::Choke]);
    assert!(requests(&raw.take(conn)).is_empty());
    raw.send(conn, &[Message::Unchoke]);
    assert_eq!(requests(&raw.take(conn)), first);
    // Serve whatever is asked until nothing more is.
    let mut asked = first;
    let mut served = BTreeSet::new();
    let mut seen = Vec::new();
    while !asked.is_empty() {
        let blocks: Vec<Message> = asked
            .iter()
            .map(|(p, b)| block_msg(&content, *p, *b, 16384))
            .collect();
        served.extend(asked.iter().copied());
        raw.send(conn, &blocks);
        let msgs = raw.take(conn);
        asked = requests(&msgs);
        seen.extend(msgs);
    }
    let all: BTreeSet<(u32, u32)> = [(0, 0), (0, 16384), (1, 0), (1, 16384)].into();
    assert_eq!(served, all);
    let mut verified: Vec<u32> = raw
        .events
        .iter()
        .filter_map(|e| match e {
            Event::PieceVerified { piece, .. } => Some(*piece),
            _ => None,
        })
        .collect();
    verified.sort_unstable();
    assert_eq!(verified, vec![0, 1]);
    assert_eq!(raw.disk.pieces().len(), 2);
    // We told the peer about them... and lost interest, since it has nothing else.
    assert!(seen.contains(&Message::NotInterested), "{seen:?}");
}

#[test]
fn choke_with_fast_extension_keeps_requests_until_rejected_and_allowed_fast_works() {
    let (mut raw, _meta, _content, _t, conn) = raw_leecher(Reserved::FAST);
    raw.take(conn);
    raw.send(conn, &[Message::Have { piece: 2 }, Message::Unchoke]);
    let first = requests(&raw.take(conn));
    assert!(!first.is_empty());
    // Choked: requests stay outstanding (no re-request, nothing released).
    raw.send(conn, &[Message::Choke]);
    assert!(requests(&raw.take(conn)).is_empty());
    let st = raw
        .engine
        .torrent_stats(raw.now, TorrentId(0))
        .expect("stats");
    assert_eq!(st.peer_list[0].requests as usize, first.len());
    // Rejections return the blocks; still choked, so nothing is asked...
    let rejects: Vec<Message> = first
        .iter()
        .map(|(p, b)| {
            Message::RejectRequest(crate::wire::BlockRequest {
                index: *p,
                begin: *b,
                length: 16384,
            })
        })
        .collect();
    raw.send(conn, &rejects);
    assert!(requests(&raw.take(conn)).is_empty());
    // ...except pieces the peer allows fast.
    raw.send(conn, &[Message::AllowedFast { piece: 2 }]);
    let fast = requests(&raw.take(conn));
    assert!(
        !fast.is_empty() && fast.iter().all(|(p, _)| *p == 2),
        "{fast:?}"
    );
}

#[test]
fn hostile_peers_are_cut_off_without_harming_the_torrent() {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let mut raw = Raw::new();
    let mut config = EngineConfig::default();
    config.session.max_incoming_requests = 4;
    raw.engine = Engine::new(config, 7, raw.now);
    let pieces = meta.info.layout().piece_count();
    let t = raw.add_seed(&meta, &content);
    let hs = Handshake::new(
        meta.info_hash(),
        PeerId(*b"-XX0001-floodfloodfl"),
        Reserved::FAST,
    );
    // A peer that floods requests.
    let flood = raw
        .engine
        .handle_incoming(raw.now, addr(201, 1))
        .expect("accepted");
    raw.engine.handle_read(raw.now, flood, &hs.to_bytes());
    raw.send(flood, &[Message::Interested]);
    let msgs = raw.take(flood);
    assert!(msgs.contains(&Message::Unchoke), "{msgs:?}");
    let many: Vec<Message> = (0..pieces - 1)
        .flat_map(|i| [0, 16384].map(|begin| (i, begin)))
        .map(|(index, begin)| {
            Message::Request(crate::wire::BlockRequest {
                index,
                begin,
                length: 16384,
            })
        })
        .collect();
    raw.send(flood, &many);
    assert!(raw.closed.contains(&flood));
    // A peer that announces an oversized frame.
    let big = raw
        .engine
        .handle_incoming(raw.now, addr(202, 1))
        .expect("accepted");
    let hs2 = Handshake::new(
        meta.info_hash(),
        PeerId(*b"-XX0001-bigbigbigbig"),
        Reserved::FAST,
    );
    let mut bytes = hs2.to_bytes().to_vec();
    bytes.extend_from_slice(&0x0100_0000u32.to_be_bytes());
    bytes.extend_from_slice(&[7u8; 64]);
    raw.engine.handle_read(raw.now, big, &bytes);
    raw.drain();
    assert!(raw.closed.contains(&big));
    let reasons: Vec<&String> = raw
        .events
        .iter()
        .filter_map(|e| match e {
            Event::PeerDisconnected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    // An honest peer is still served.
    let ok = raw.connect_in(
        addr(203, 1),
        meta.info_hash(),
        *b"-XX0001-honesthonest",
        Reserved::FAST,
        &[Message::Interested],
    );
    raw.take(ok);
    raw.send(
        ok,
        &[Message::Request(crate::wire::BlockRequest {
            index: 1,
            begin: 0,
            length: 16384,
        })],
    );
    let got = raw.take(ok);
    assert_eq!(got, vec![block_msg(&content, 1, 0, 16384)]);
    let st = raw.engine.torrent_stats(raw.now, t).expect("stats");
    assert_eq!(st.state, TorrentState::Seeding);
}

// ----- several torrents, errors, user commands ----------------------------------------------------

#[test]
fn disk_write_failure_stops_only_that_torrent() {
    let (meta_a, content_a) = make_torrent("a", FILES, PL, vec![]);
    let (meta_b, content_b) = make_torrent("b", &[("x", 70_000), ("y", 90_000)], PL, vec![]);
    let mut net = Net::new();
    let s = net.add_node(EngineConfig::default(), 1);
    let l = net.add_node(EngineConfig::default(), 2);
    let now = net.now;
    let full = |m: &Metainfo| Some(Bitfield::full(m.info.layout().piece_count()));
    let sa = net.nodes[s]
        .engine
        .add_torrent(now, add(&meta_a, full(&meta_a), vec![]))
        .expect("a");
    let sb = net.nodes[s]
        .engine
        .add_torrent(now, add(&meta_b, full(&meta_b), vec![]))
        .expect("b");
    load_disk(&mut net.nodes[s], sa, &content_a, PL);
    load_disk(&mut net.nodes[s], sb, &content_b, PL);
    let seeder = net.nodes[s].addr;
    let la = net.nodes[l]
        .engine
        .add_torrent(now, add(&meta_a, None, vec![seeder]))
        .expect("a");
    let lb = net.nodes[l]
        .engine
        .add_torrent(now, add(&meta_b, None, vec![seeder]))
        .expect("b");
    net.nodes[l].disk.fail_writes.insert(la);
    // Both torrents connect to the same seeder at once (one connection per torrent).
    let connected = |n: &Net| {
        n.nodes[l]
            .events
            .iter()
            .filter(|e| matches!(e, Event::PeerConnected { .. }))
            .count()
            == 2
    };
    assert!(net.run_until(Duration::from_secs(5), connected));
    assert!(net.run_until(Duration::from_secs(300), |n| n.completed(l, lb)));
    assert_eq!(disk_content(&net.nodes[l], lb), content_b);
    let st = net.nodes[l]
        .engine
        .torrent_stats(net.now, la)
        .expect("stats");
    assert!(
        matches!(&st.state, TorrentState::Error(m) if m.contains("no space")),
        "{:?}",
        st.state
    );
    assert_eq!(st.peers, 0);
    assert!(net.nodes[l]
        .events
        .iter()
        .any(|e| matches!(e, Event::TorrentError { torrent, .. } if *torrent == la)));
    assert!(!net.completed(l, la));
    assert_eq!(
        net.nodes[l]
            .engine
            .torrent_stats(net.now, lb)
            .expect("b")
            .state,
        TorrentState::Seeding
    );
}

#[test]
fn pause_resume_and_remove() {
    let url = "http://tracker.test:8080/announce".to_owned();
    let (mut net, _meta, content, _ts, tl) = seed_and_leech(vec![vec![url]]);
    let tracker = addr(100, 8080);
    let seeder = net.nodes[0].addr;
    net.serve_tracker("tracker.test", tracker, &[seeder]);
    // Pause after the first verified piece.
    let first = |n: &Net| {
        n.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::PieceVerified { .. }))
    };
    assert!(net.run_until(Duration::from_secs(30), first));
    let now = net.now;
    net.nodes[1].engine.pause(now, tl);
    net.settle();
    let st = net.nodes[1]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    assert_eq!(st.state, TorrentState::Paused);
    assert_eq!(st.peers, 0);
    assert!(st.have.count_ones() >= 1 && !st.have.all());
    assert!(net.nodes[1].events.contains(&Event::TorrentPaused(tl)));
    assert!(net.http[&tracker]
        .requests
        .iter()
        .any(|r| r.contains("event=stopped")));
    assert!(net.links.is_empty(), "every connection closed");
    // Nothing happens while paused.
    net.run_for(Duration::from_secs(120));
    assert!(!net.completed(1, tl));
    assert!(net.links.is_empty());
    // Resume: started again, download completes, verified pieces were kept.
    let now = net.now;
    net.nodes[1].engine.resume(now, tl);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    let started = net.http[&tracker]
        .requests
        .iter()
        .filter(|r| r.contains("event=started"))
        .count();
    assert!(started >= 2);
    // Remove: stopped announce, the id is forgotten.
    let before = net.http[&tracker].requests.len();
    let now = net.now;
    net.nodes[1].engine.remove(now, tl);
    net.settle();
    assert!(net.nodes[1].events.contains(&Event::TorrentRemoved(tl)));
    assert!(net.nodes[1].engine.torrent_stats(net.now, tl).is_none());
    assert!(net.http[&tracker].requests[before..]
        .iter()
        .any(|r| r.contains("event=stopped")));
    assert!(net.nodes[1].engine.stats(net.now).is_empty());
}

#[test]
fn file_selection_fetches_only_needed_pieces_and_can_change_while_running() {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let layout = meta.info.layout().clone();
    let mut net = Net::new();
    let s = net.add_node(EngineConfig::default(), 1);
    let l = net.add_node(EngineConfig::default(), 2);
    let now = net.now;
    net.add_seed(s, &meta, &content, PL);
    // Only the first file (sorted by path: a.bin).
    let first_file = layout
        .files()
        .iter()
        .position(|f| f.display_path().ends_with("a.bin"))
        .expect("a.bin");
    let mut wanted = vec![false; layout.files().len()];
    wanted[first_file] = true;
    let seeder = net.nodes[s].addr;
    let mut a = add(&meta, None, vec![seeder]);
    a.wanted_files = Some(wanted);
    let tl = net.nodes[l].engine.add_torrent(now, a).expect("leech");
    net.tap.insert(l);
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(l, tl)));
    let needed = layout.file_pieces(first_file).expect("range");
    let asked: BTreeSet<u32> = net
        .sent
        .iter()
        .filter_map(|(i, _, m)| match m {
            Message::Request(r) if *i == l => Some(r.index),
            _ => None,
        })
        .collect();
    assert!(
        asked.iter().all(|p| needed.contains(p)),
        "{asked:?} outside {needed:?}"
    );
    let on_disk: BTreeSet<u32> = net.nodes[l].disk.pieces().keys().map(|(_, p)| *p).collect();
    assert_eq!(on_disk, needed.clone().collect());
    let st = net.nodes[l]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    assert_eq!(st.state, TorrentState::Seeding);
    assert_eq!(st.files[first_file].have, st.files[first_file].length);
    // Select everything while running: the rest comes.
    let now = net.now;
    let n_files = layout.files().len();
    net.nodes[l]
        .engine
        .set_wanted_files(now, tl, vec![true; n_files])
        .expect("select");
    assert_eq!(
        net.nodes[l].engine.set_wanted_files(now, tl, vec![true]),
        Err(AddError::SelectionLength {
            got: 1,
            files: n_files
        })
    );
    // The seeder connection was dropped when both were "complete"; it is dialled again.
    assert!(net.run_until(Duration::from_secs(300), |n| {
        n.nodes[l]
            .engine
            .torrent_stats(n.now, tl)
            .is_some_and(|s| s.have.all())
    }));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
}

#[test]
fn pieces_in_memory_are_capped() {
    let (meta, content) = make_torrent("multi", FILES, PL, vec![]);
    let mut net = Net::new();
    let s = net.add_node(EngineConfig::default(), 1);
    let l = net.add_node(
        EngineConfig {
            // Below the floor: the cap becomes two pieces.
            max_pending_piece_bytes: 1,
            ..EngineConfig::default()
        },
        2,
    );
    net.add_seed(s, &meta, &content, PL);
    let seeder = net.nodes[s].addr;
    let tl = net.add_leech(l, &meta, vec![seeder]);
    // Hash jobs never finish: pieces pile up in memory, but no more than the cap allows.
    net.held_hash = true;
    net.run_for(Duration::from_secs(30));
    let held = net.held.iter().filter(|(i, _, _)| *i == l).count();
    // The cap is two pieces; the pick that crosses it may start one more.
    assert!((1..=3).contains(&held), "{held} pieces held");
    // Release them: the download completes.
    net.held_hash = false;
    for (i, id, job) in std::mem::take(&mut net.held) {
        let result = net.run_job(i, &job);
        net.queue.push_back(Action::JobDone {
            node: i,
            id,
            result,
        });
    }
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
}

#[test]
fn same_seed_same_run() {
    let run = || {
        let (mut net, _content, tl, _addrs) = swarm(3, &[Serve::Honest, Serve::Corrupt]);
        net.tap.insert(3);
        assert!(net.run_until(Duration::from_secs(120), |n| n.completed(3, tl)));
        (net.nodes[3].events.clone(), net.sent.len(), net.now)
    };
    assert_eq!(run(), run());
}

#[test]
fn duplicate_add_and_bad_selection_are_refused() {
    let (meta, _content) = make_torrent("multi", FILES, PL, vec![]);
    let mut e = Engine::new(EngineConfig::default(), 3, Instant::from_secs(1));
    let now = Instant::from_secs(1);
    e.add_torrent(now, add(&meta, None, vec![])).expect("first");
    assert_eq!(
        e.add_torrent(now, add(&meta, None, vec![])),
        Err(AddError::Duplicate(meta.info_hash()))
    );
    let (other, _) = make_torrent("other", FILES, PL, vec![]);
    let mut a = add(&other, None, vec![]);
    a.wanted_files = Some(vec![true]);
    assert!(matches!(
        e.add_torrent(now, a),
        Err(AddError::SelectionLength { .. })
    ));
    let mut a = add(&other, Some(Bitfield::new(3)), vec![]);
    a.wanted_files = None;
    assert!(matches!(
        e.add_torrent(now, a),
        Err(AddError::HaveLength { .. })
    ));
    // Connection caps: incoming refused past max_connections, and twice from one address.
    let mut e = Engine::new(
        EngineConfig {
            max_connections: 1,
            ..EngineConfig::default()
        },
        3,
        now,
    );
    assert!(e.handle_incoming(now, addr(9, 1)).is_some());
    assert!(e.handle_incoming(now, addr(9, 2)).is_none());
}

#[test]
fn a_dial_to_ourselves_is_never_repeated() {
    let (mut net, _meta, _content, _ts, tl) = seed_and_leech(vec![]);
    let own = net.nodes[1].addr;
    let now = net.now;
    net.nodes[1].engine.add_peer(now, tl, own);
    net.run_for(Duration::from_secs(600));
    let dials = net
        .connects
        .iter()
        .filter(|(i, a)| *i == 1 && *a == own)
        .count();
    assert_eq!(dials, 1);
    assert!(net.links.is_empty());
}

#[test]
fn seeds_do_not_keep_connections_to_seeds_and_a_bigger_torrent_is_quick() {
    // 3 MiB in 256 KiB pieces from two seeders; the seeders, both complete, drop each other.
    let files: &[(&str, u64)] = &[("big", 3 * 1024 * 1024), ("tail", 12_345)];
    let pl = 256 * 1024;
    let (meta, content) = make_torrent("big", files, pl, vec![]);
    let mut net = Net::new();
    let now = net.now;
    let pieces = meta.info.layout().piece_count();
    let s1 = net.add_node(EngineConfig::default(), 1);
    let s2 = net.add_node(EngineConfig::default(), 2);
    let l = net.add_node(EngineConfig::default(), 3);
    let a2 = net.nodes[s2].addr;
    for (s, peers) in [(s1, vec![a2]), (s2, vec![])] {
        let t = net.nodes[s]
            .engine
            .add_torrent(now, add(&meta, Some(Bitfield::full(pieces)), peers))
            .expect("seed");
        load_disk(&mut net.nodes[s], t, &content, pl);
    }
    let seeders = vec![net.nodes[s1].addr, a2];
    let tl = net.nodes[l]
        .engine
        .add_torrent(now, add(&meta, None, seeders))
        .expect("leech");
    assert!(net.run_until(Duration::from_secs(60), |n| n.completed(l, tl)));
    assert_eq!(disk_content(&net.nodes[l], tl), content);
    let st = net.nodes[s1].engine.stats(net.now);
    assert!(
        st[0].peer_list.iter().all(|p| p.addr != a2),
        "seed-to-seed link kept"
    );
    assert!(net.nodes[s1].events.iter().any(|e| matches!(
        e,
        Event::PeerDisconnected { addr, .. } if *addr == a2
    )));
}

#[test]
fn scrape_asks_every_tracker_over_udp_and_http_and_reports_failures() {
    use crate::tracker::ScrapeStats;
    let udp_url = "udp://udp.test:6969/announce".to_owned();
    let http_url = "http://tracker.test:8080/announce".to_owned();
    let dead_url = "http://nowhere.test/announce".to_owned();
    let odd_url = "http://tracker.test:8080/tracker".to_owned();
    let (mut net, meta, _content, _ts, tl) = seed_and_leech(vec![
        vec![udp_url.clone()],
        vec![http_url.clone(), dead_url.clone()],
        vec![odd_url.clone()],
    ]);
    let udp = addr(101, 6969);
    let http = addr(100, 8080);
    net.hosts.insert("udp.test", udp.ip());
    net.hosts.insert("tracker.test", http.ip());
    net.udp.insert(
        udp,
        FakeUdp {
            peers: vec![],
            announces: Vec::new(),
        },
    );
    // The fake HTTP tracker answers every request with a scrape body for our torrent.
    let hash = meta.info.info_hash();
    let mut body = b"d5:filesd20:".to_vec();
    body.extend_from_slice(hash.as_bytes());
    body.extend_from_slice(b"d8:completei4e10:downloadedi5e10:incompletei6eeee");
    net.http.insert(
        http,
        FakeHttp {
            body,
            requests: Vec::new(),
        },
    );
    let now = net.now;
    assert_eq!(
        net.nodes[1].engine.scrape(now, TorrentId(999)),
        Err(AddError::UnknownTorrent(TorrentId(999)))
    );
    let asked = net.nodes[1].engine.scrape(now, tl).expect("scrape");
    assert_eq!(asked.len(), 4, "{asked:?}");
    let done = |n: &Net| {
        n.nodes[1]
            .events
            .iter()
            .filter(|e| matches!(e, Event::ScrapeResult { .. }))
            .count()
            >= 4
    };
    assert!(net.run_until(Duration::from_secs(30), done));
    let results: BTreeMap<String, Result<ScrapeStats, String>> = net.nodes[1]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::ScrapeResult {
                torrent,
                url,
                result,
            } if *torrent == tl => Some((url.clone(), result.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        results[&udp_url],
        Ok(ScrapeStats {
            seeders: 7,
            completed: 9,
            leechers: 3
        })
    );
    assert_eq!(
        results[&http_url],
        Ok(ScrapeStats {
            seeders: 4,
            completed: 5,
            leechers: 6
        })
    );
    let dead = results[&dead_url].as_ref().expect_err("unknown host");
    assert!(dead.contains("nowhere.test"), "{dead}");
    let odd = results[&odd_url]
        .as_ref()
        .expect_err("no scrape convention");
    assert!(odd.contains("scrape"), "{odd}");
    // The HTTP scrape went to /scrape with the info-hash.
    assert!(net.http[&http]
        .requests
        .iter()
        .any(|r| r.starts_with("GET /scrape?info_hash=")));
}

mod dht;
mod hostile;
mod magnet;
mod mse;
mod utp;

#[test]
fn a_torrent_stopped_by_a_write_failure_completes_after_resume() {
    let (mut net, _meta, content, _ts, tl) = seed_and_leech(vec![]);
    net.nodes[1].disk.fail_writes.insert(tl);
    let (now, seeder) = (net.now, net.nodes[0].addr);
    net.nodes[1].engine.add_peer(now, tl, seeder);
    let stopped = |n: &Net| {
        n.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::TorrentError { .. }))
    };
    assert!(net.run_until(Duration::from_secs(30), stopped));
    net.settle();
    // The disk has room again: resume, and every piece (also those whose write failed) arrives.
    net.nodes[1].disk.fail_writes.clear();
    let now = net.now;
    net.nodes[1].engine.resume(now, tl);
    assert!(
        net.run_until(Duration::from_secs(120), |n| n.completed(1, tl)),
        "{:?}",
        net.nodes[1]
            .engine
            .torrent_stats(net.now, tl)
            .map(|s| s.have)
    );
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    assert_eq!(net.nodes[1].engine.pieces.bytes(), 0);
}

/// A dial to a peer that fails before the handshake (nobody listens there) is told as
/// `PeerConnectFailed` with the reason, so a peer given by hand that cannot be reached leaves a
/// trace; it is tried again after its back-off.
#[test]
fn a_failed_dial_is_reported_and_retried() {
    let (mut net, _meta, _content, _ts, tl) = seed_and_leech(vec![]);
    let nobody: SocketAddr = "127.0.0.99:6881".parse().expect("addr");
    let now = net.now;
    net.nodes[1].engine.add_peer(now, tl, nobody);
    let failures = |n: &Net| {
        n.nodes[1]
            .events
            .iter()
            .filter(|e| {
                matches!(e, Event::PeerConnectFailed { torrent, addr, reason }
                    if *torrent == tl && *addr == nobody && reason.contains("refused"))
            })
            .count()
    };
    assert!(net.run_until(Duration::from_secs(5), |n| failures(n) == 1));
    assert!(net.run_until(Duration::from_secs(120), |n| failures(n) >= 2));
}

/// A failed background flush (the driver's `fdatasync`, outside any job) stops the torrent like a
/// failed write: its peers are dropped and the error names the failure; the seeder goes on.
#[test]
fn a_failed_flush_stops_the_torrent() {
    let (mut net, _meta, _content, ts, tl) = seed_and_leech(vec![]);
    let (now, seeder) = (net.now, net.nodes[0].addr);
    net.nodes[1].engine.add_peer(now, tl, seeder);
    assert!(net.run_until(Duration::from_secs(30), |n| {
        n.nodes[1]
            .events
            .iter()
            .any(|e| matches!(e, Event::PieceVerified { .. }))
    }));
    let now = net.now;
    net.nodes[1].engine.handle_storage_failed(
        now,
        tl,
        StorageFailure {
            kind: StorageFailureKind::Other,
            message: "syncing multi/a: Input/output error".into(),
        },
    );
    net.settle();
    let st = net.nodes[1]
        .engine
        .torrent_stats(net.now, tl)
        .expect("stats");
    assert!(
        matches!(&st.state, TorrentState::Error(m) if m.contains("Input/output error")),
        "{:?}",
        st.state
    );
    assert_eq!(st.peers, 0);
    assert!(net.nodes[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::TorrentError { torrent, .. } if *torrent == tl)));
    let seed = net.nodes[0]
        .engine
        .torrent_stats(net.now, ts)
        .expect("seeder stats");
    assert!(
        matches!(seed.state, TorrentState::Seeding),
        "{:?}",
        seed.state
    );
}

#[test]
fn a_verify_job_out_at_a_disk_error_still_settles_its_piece_after_resume() {
    let (mut net, _meta, content, _ts, tl) = seed_and_leech(vec![]);
    let (now, seeder) = (net.now, net.nodes[0].addr);
    net.held_hash = true;
    net.nodes[1].engine.add_peer(now, tl, seeder);
    assert!(net.run_until(Duration::from_secs(30), |n| n.held.len() >= 2));
    // One verify-and-write job fails (a disk error stops the torrent); another is still out.
    let (_, failing, _) = net.held.remove(0);
    let (i, out_id, out_job) = net.held.remove(0);
    let Job::VerifyWrite { piece, .. } = out_job else {
        panic!("held a {out_job:?}")
    };
    let now = net.now;
    net.nodes[1].engine.handle_job_done(
        now,
        failing,
        JobResult::Failed(StorageFailure {
            kind: StorageFailureKind::Other,
            message: "hash thread died".into(),
        }),
    );
    net.settle();
    assert!(net.nodes[1]
        .events
        .iter()
        .any(|e| matches!(e, Event::TorrentError { .. })));
    // Resumed with the job still out: its piece is not fetched again, and its answer settles it.
    net.held_hash = false;
    for (i, id, job) in std::mem::take(&mut net.held) {
        let result = net.run_job(i, &job);
        net.queue.push_back(Action::JobDone {
            node: i,
            id,
            result,
        });
    }
    let now = net.now;
    net.nodes[1].engine.resume(now, tl);
    let result = net.run_job(i, &out_job);
    net.queue.push_back(Action::JobDone {
        node: i,
        id: out_id,
        result,
    });
    assert!(net.run_until(Duration::from_secs(120), |n| n.completed(1, tl)));
    assert_eq!(disk_content(&net.nodes[1], tl), content);
    assert_eq!(net.nodes[1].engine.pieces.bytes(), 0);
    let verified = net.nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, Event::PieceVerified { piece: p, .. } if *p == piece))
        .count();
    assert_eq!(
        verified, 1,
        "piece {piece} was verified once, by the job that was out"
    );
}

#[test]
fn a_failed_piece_is_fetched_again_from_a_peer_that_sent_none_of_it() {
    // One piece of two blocks, one request per peer at a time.
    let (meta, content) = make_torrent("one", &[("x", u64::from(PL))], PL, vec![]);
    let mut raw = Raw::new();
    let mut config = EngineConfig::default();
    config.session.min_queue_depth = 1;
    config.session.max_queue_depth = 1;
    raw.engine = Engine::new(config, 7, raw.now);
    let t = raw.add_leech(&meta);
    let mut conns = Vec::new();
    for (i, name) in [
        b"-XX0001-liarliarliar",
        b"-XX0001-honesthonest",
        b"-XX0001-latecomer123",
    ]
    .iter()
    .enumerate()
    {
        let conn = raw
            .engine
            .handle_incoming(raw.now, addr(200 + i as u8, 5000))
            .expect("accepted");
        let hs = Handshake::new(meta.info_hash(), PeerId(**name), Reserved::empty());
        raw.engine.handle_read(raw.now, conn, &hs.to_bytes());
        raw.drain();
        raw.send(conn, &[Message::Bitfield(bitfield_of(1, &[0]))]);
        conns.push(conn);
    }
    let (liar, honest, late) = (conns[0], conns[1], conns[2]);
    raw.send(liar, &[Message::Unchoke]);
    raw.send(honest, &[Message::Unchoke]);
    let to_liar = requests(&raw.take(liar));
    let to_honest = requests(&raw.take(honest));
    assert_eq!((to_liar.len(), to_honest.len()), (1, 1));
    // The third peer unchokes too (it gets an endgame duplicate, which it leaves unanswered).
    raw.send(late, &[Message::Unchoke]);
    raw.take(late);
    // The liar's block is garbage: the piece fails with blocks from two peers.
    let (_, lb) = *to_liar.iter().next().expect("request");
    let (_, hb) = *to_honest.iter().next().expect("request");
    let Message::Piece {
        index,
        begin,
        block,
    } = block_msg(&content, 0, lb, PL / 2)
    else {
        unreachable!()
    };
    let bad: Vec<u8> = block.iter().map(|b| b ^ 0x5a).collect();
    raw.send(
        liar,
        &[Message::Piece {
            index,
            begin,
            block: bad.into(),
        }],
    );
    // (Endgame: the honest peer's block is asked of the others too, and cancelled when it comes.)
    for c in &conns {
        raw.take(*c);
    }
    raw.send(honest, &[block_msg(&content, 0, hb, PL / 2)]);
    assert!(raw
        .events
        .iter()
        .any(|e| matches!(e, Event::PieceFailed { piece: 0, .. })));
    // The piece is fetched again from the peer that sent none of it, not from the two that did.
    assert!(requests(&raw.take(liar)).is_empty(), "asked the liar again");
    assert!(
        requests(&raw.take(honest)).is_empty(),
        "asked a suspect again"
    );
    let mut asked = BTreeSet::new();
    for _ in 0..2 {
        let r = requests(&raw.take(late));
        assert!(!r.is_empty(), "the newcomer fetches the piece");
        for &(p, b) in &r {
            raw.send(late, &[block_msg(&content, p, b, PL / 2)]);
        }
        asked.extend(r);
    }
    assert_eq!(asked.len(), 2);
    assert!(raw
        .events
        .iter()
        .any(|e| matches!(e, Event::PieceVerified { piece: 0, .. })));
    // The blocks kept from the failed attempt then name the liar, and only the liar.
    let bans: Vec<SocketAddr> = raw
        .events
        .iter()
        .filter_map(|e| match e {
            Event::PeerBanned { addr, .. } => Some(*addr),
            _ => None,
        })
        .collect();
    assert_eq!(bans, vec![addr(200, 5000)]);
    assert_eq!(raw.disk.get(t, 0).map(|d| d.to_vec()), Some(content));
}

#[path = "tests_limits.rs"]
mod limits;

//! Web seeds in the engine against an in-memory HTTP server on a virtual clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::*;
use crate::bencode::OwnedValue;
use crate::engine::{AddMagnet, AddTorrent, EngineConfig, Job, JobId};
use crate::ext::metadata::{MetadataMessage, METADATA_PIECE_LEN};
use crate::magnet::MagnetLink;
use crate::metainfo::{Metainfo, TorrentBuilder};
use crate::rng::{seeded, RngExt};
use crate::testkit::{MemDisk, OriginUse};
use crate::types::PeerId;
use crate::wire::{Decoded, Decoder, Handshake, Message, Reserved, DEFAULT_MAX_FRAME_LEN};

/// How the fake server misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Honest,
    /// Flips a byte in every answer for this path.
    Corrupt(String),
    /// `503 Retry-After: 2` for the first N requests.
    Busy(u32),
    /// `404` for this path.
    Missing(String),
    /// `200` with the whole file.
    IgnoreRange,
    /// Chunked bodies, and `Connection: close` after each answer.
    ChunkedClose,
    /// Answers nothing to the first request.
    SilentOnce,
    /// Redirects every request to `/moved/...` once.
    Redirect,
    /// Closes the connection without answering the second request on it (an idle keep-alive
    /// connection timed out by the server as the request went out).
    DropSecond,
    /// Origins (every server but [`MIRROR`]) answer every request with `302` to this prefix
    /// followed by the request's target; the mirror serves `/moved/...`.
    RedirectTo(String),
    /// Origins redirect to the mirror, which redirects back to the origin, forever.
    RedirectLoop,
}

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), 8080);
/// Where `mirror.test` resolves: the other host redirects lead to.
const MIRROR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10)), 8081);
/// An address that refuses connections (`dual.test` resolves to it first, then to the mirror).
const DEAD: SocketAddr = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 8081);
/// A second origin (the second `url-list` entry of [`Harness::with_urls`]).
const SERVER2: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 11)), 8080);

struct Harness {
    now: Instant,
    engine: Engine,
    tid: TorrentId,
    files: BTreeMap<String, Vec<u8>>,
    content: Vec<u8>,
    piece_length: u32,
    mode: Mode,
    requests: Vec<String>,
    open: BTreeSet<ConnId>,
    queue: VecDeque<(ConnId, Option<Bytes>)>,
    /// Verified pieces (one torrent: the key is `()`).
    written: MemDisk<()>,
    events: Vec<Event>,
    silenced: bool,
    max_open: usize,
    per_conn: BTreeMap<ConnId, u32>,
    /// Where each open connection goes, and with which TLS server name.
    server_of: BTreeMap<ConnId, (SocketAddr, Option<String>)>,
    /// Names the harness resolves, and the lookups asked for.
    names: BTreeMap<String, SocketAddr>,
    resolved: Vec<String>,
    /// Requests per server, and the most connections open to each at once.
    requests_at: BTreeMap<SocketAddr, u32>,
    max_open_at: BTreeMap<SocketAddr, usize>,
    /// A hand-driven BitTorrent peer that has the metadata and no piece (magnet tests).
    peer: Option<MetaPeer>,
    /// Connections to [`DEAD`], refused.
    refused: u32,
}

/// A peer that answers `ut_metadata` requests from `metadata` and has no piece.
struct MetaPeer {
    conn: ConnId,
    decoder: Decoder,
    metadata: Bytes,
    served: u32,
}

/// The `ut_metadata` id the hand-driven peer registers (ours is 1).
const PEER_META_ID: u8 = 3;
const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 20)), 6881);

fn build(
    name: &str,
    files: &[(&str, u64)],
    piece: u32,
    urls: &[&str],
) -> (Metainfo, Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let list: Vec<(Vec<String>, u64)> = files
        .iter()
        .map(|(p, l)| (vec![(*p).to_owned()], *l))
        .collect();
    let builder = if files.len() == 1 {
        TorrentBuilder::single_file(name, files[0].1)
    } else {
        TorrentBuilder::multi_file(name, list)
    };
    let mut hasher = builder
        .piece_length(piece)
        .url_list(urls.iter().map(|u| (*u).to_owned()).collect())
        .start()
        .unwrap();
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    let mut rng = seeded(total);
    let content: Vec<u8> = (0..total).map(|_| rng.random::<u8>()).collect();
    hasher.update(&content).unwrap();
    let built = hasher.finish().unwrap();
    let meta = Metainfo::from_bytes(&built.bytes).unwrap();
    let mut by_path = BTreeMap::new();
    let mut at = 0usize;
    for (p, l) in files {
        let path = if files.len() == 1 {
            "/seed/".to_owned() + &crate::tracker::http::percent_encode(name.as_bytes())
        } else {
            format!(
                "/seed/{}/{}",
                crate::tracker::http::percent_encode(name.as_bytes()),
                crate::tracker::http::percent_encode(p.as_bytes())
            )
        };
        by_path.insert(path, content[at..at + *l as usize].to_vec());
        at += *l as usize;
    }
    (meta, content, by_path)
}

impl Harness {
    fn new(files: &[(&str, u64)], piece: u32, mode: Mode) -> Harness {
        Harness::with(files, piece, mode, EngineConfig::default())
    }

    fn with(files: &[(&str, u64)], piece: u32, mode: Mode, config: EngineConfig) -> Harness {
        Harness::with_urls(files, piece, mode, config, &["http://10.0.0.9:8080/seed/"])
    }

    fn with_urls(
        files: &[(&str, u64)],
        piece: u32,
        mode: Mode,
        config: EngineConfig,
        urls: &[&str],
    ) -> Harness {
        let (meta, content, by_path) = build("my data", files, piece, urls);
        let now = Instant::from_secs(100);
        let mut engine = Engine::new(config, 7, now);
        let tid = engine
            .add_torrent(
                now,
                AddTorrent {
                    metainfo: meta,
                    have: None,
                    wanted_files: None,
                    paused: false,
                    peers: Vec::new(),
                },
            )
            .unwrap();
        Harness::from_parts(engine, now, tid, content, by_path, piece, mode)
    }

    fn from_parts(
        engine: Engine,
        now: Instant,
        tid: TorrentId,
        content: Vec<u8>,
        by_path: BTreeMap<String, Vec<u8>>,
        piece: u32,
        mode: Mode,
    ) -> Harness {
        Harness {
            now,
            engine,
            tid,
            files: by_path,
            content,
            piece_length: piece,
            mode,
            requests: Vec::new(),
            open: BTreeSet::new(),
            queue: VecDeque::new(),
            written: MemDisk::new(),
            events: Vec::new(),
            silenced: false,
            max_open: 0,
            per_conn: BTreeMap::new(),
            server_of: BTreeMap::new(),
            names: [
                ("mirror.test".to_owned(), MIRROR),
                ("dual.test".to_owned(), MIRROR),
                ("origin.test".to_owned(), SERVER),
            ]
            .into_iter()
            .collect(),
            resolved: Vec::new(),
            requests_at: BTreeMap::new(),
            max_open_at: BTreeMap::new(),
            peer: None,
            refused: 0,
        }
    }

    fn answer(&mut self, conn: ConnId, req: &[u8]) -> (Vec<u8>, bool) {
        *self.per_conn.entry(conn).or_insert(0) += 1;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut headers);
        assert!(
            matches!(r.parse(req), Ok(httparse::Status::Complete(_))),
            "{req:?}"
        );
        let target = r.path.unwrap().to_owned();
        let range = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("range"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .unwrap();
        self.requests.push(format!("{target} {range}"));
        let n = self.requests.len() as u32;
        let server = self.server_of[&conn].0;
        *self.requests_at.entry(server).or_insert(0) += 1;
        let redirect = |to: String| {
            (
                format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
                    .into_bytes(),
                false,
            )
        };
        match &self.mode {
            Mode::RedirectTo(prefix) if server != MIRROR => {
                return redirect(format!("{prefix}{target}"));
            }
            Mode::RedirectLoop if server != MIRROR => {
                return redirect(format!("http://mirror.test:8081{target}"));
            }
            Mode::RedirectLoop => return redirect(format!("http://10.0.0.9:8080{target}")),
            Mode::Busy(k) if n <= *k => {
                return (
                    b"HTTP/1.1 503 Busy\r\nRetry-After: 2\r\nContent-Length: 4\r\n\r\nbusy"
                        .to_vec(),
                    false,
                )
            }
            Mode::SilentOnce if !self.silenced => {
                self.silenced = true;
                return (Vec::new(), false);
            }
            Mode::DropSecond if self.per_conn.get(&conn) == Some(&2) => return (Vec::new(), true),
            Mode::Redirect if !target.starts_with("/moved") => {
                return (
                    format!(
                    "HTTP/1.1 302 Found\r\nLocation: /moved{target}\r\nContent-Length: 0\r\n\r\n"
                )
                    .into_bytes(),
                    false,
                )
            }
            _ => {}
        }
        let path = target.strip_prefix("/moved").unwrap_or(&target).to_owned();
        if self.mode == Mode::Missing(path.clone()) {
            return (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                false,
            );
        }
        let file = self
            .files
            .get(&path)
            .unwrap_or_else(|| panic!("no file {path}"))
            .clone();
        let (a, b) = range
            .strip_prefix("bytes=")
            .unwrap()
            .split_once('-')
            .unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        let mut body = file[a..=b].to_vec();
        if self.mode == Mode::Corrupt(path.clone()) {
            body[0] ^= 0xff;
        }
        if self.mode == Mode::IgnoreRange {
            let mut w =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", file.len()).into_bytes();
            w.extend_from_slice(&file);
            return (w, false);
        }
        let cr = format!("Content-Range: bytes {a}-{b}/{}\r\n", file.len());
        if self.mode == Mode::ChunkedClose {
            let mut w = format!("HTTP/1.1 206 Partial\r\n{cr}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").into_bytes();
            for c in body.chunks(5000) {
                w.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                w.extend_from_slice(c);
                w.extend_from_slice(b"\r\n");
            }
            w.extend_from_slice(b"0\r\n\r\n");
            return (w, true);
        }
        let mut w = format!(
            "HTTP/1.1 206 Partial\r\n{cr}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        w.extend_from_slice(&body);
        (w, false)
    }

    /// Performs outputs and delivers answers until the torrent completes or nothing is left to do
    /// (then time moves to the next deadline); gives up after `limit` steps.
    fn run(&mut self, limit: usize) -> bool {
        for _ in 0..limit {
            while let Some(o) = self.engine.poll_output() {
                match o {
                    Output::Connect { conn, addr, .. } if addr == DEAD => {
                        self.refused += 1;
                        self.engine.handle_connect_failed(self.now, conn, "refused");
                    }
                    Output::Connect { conn, addr, tls } => {
                        assert!([SERVER, SERVER2, MIRROR].contains(&addr), "{addr}");
                        assert!(
                            self.engine.torrent_info(self.tid).is_some(),
                            "web seeds wait for the metadata"
                        );
                        self.open.insert(conn);
                        self.server_of.insert(conn, (addr, tls));
                        self.max_open = self.max_open.max(self.open.len());
                        let at = self
                            .open
                            .iter()
                            .filter(|c| self.server_of.get(c).is_some_and(|s| s.0 == addr))
                            .count();
                        let m = self.max_open_at.entry(addr).or_insert(0);
                        *m = (*m).max(at);
                        self.queue.push_back((conn, None));
                    }
                    Output::Send { conn, data }
                        if self.peer.as_ref().is_some_and(|p| p.conn == conn) =>
                    {
                        self.engine.handle_flushed(self.now, conn, data.len());
                        let answer = self.peer_answers(&data);
                        if !answer.is_empty() {
                            self.queue.push_back((conn, Some(answer)));
                        }
                    }
                    Output::Send { conn, data } => {
                        assert!(self.open.contains(&conn));
                        let (resp, close) = self.answer(conn, &data);
                        for c in resp.chunks(7001) {
                            self.queue
                                .push_back((conn, Some(Bytes::copy_from_slice(c))));
                        }
                        if close {
                            self.queue.push_back((conn, Some(Bytes::new())));
                        }
                    }
                    Output::Close { conn } => {
                        self.open.remove(&conn);
                    }
                    Output::Job { id, job } => self.job(id, job),
                    Output::Resolve { id, host, port } => {
                        self.resolved.push(host.clone());
                        let found = self.names.get(&host).copied();
                        let result = match found {
                            Some(a) if host == "dual.test" => Ok(vec![DEAD, a]),
                            Some(a) => Ok(vec![SocketAddr::new(a.ip(), port)]),
                            None => Err("no such host".to_owned()),
                        };
                        self.engine.handle_resolved(self.now, id, result);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            while let Some(e) = self.engine.poll_event() {
                self.events.push(e);
            }
            if self.events.contains(&Event::TorrentCompleted(self.tid)) {
                return true;
            }
            match self.queue.pop_front() {
                Some((conn, _)) if !self.open.contains(&conn) => {}
                Some((conn, None)) => self.engine.handle_connected(self.now, conn),
                Some((conn, Some(b))) if b.is_empty() => {
                    self.open.remove(&conn);
                    self.engine.handle_closed(self.now, conn);
                }
                Some((conn, Some(b))) => {
                    self.engine
                        .handle_read_owned(self.now, conn, BytesMut::from(&b[..]))
                }
                None => match self.engine.poll_timeout() {
                    Some(t) => {
                        self.now = t.max(self.now);
                        self.engine.handle_timeout(self.now);
                    }
                    None => return false,
                },
            }
        }
        false
    }

    /// The hand-driven peer reads what the engine sent it and answers its metadata requests.
    fn peer_answers(&mut self, data: &[u8]) -> Bytes {
        let Some(p) = self.peer.as_mut() else {
            return Bytes::new();
        };
        p.decoder.extend(data);
        let mut out = BytesMut::new();
        while let Ok(Some(d)) = p.decoder.decode() {
            let Decoded::Message(Message::Extended { id, payload }) = d else {
                continue;
            };
            if id != PEER_META_ID {
                continue;
            }
            if let Ok(MetadataMessage::Request { piece }) = MetadataMessage::decode(&payload) {
                let start = piece as usize * METADATA_PIECE_LEN;
                let end = (start + METADATA_PIECE_LEN).min(p.metadata.len());
                let m = MetadataMessage::Data {
                    piece,
                    total_size: p.metadata.len() as u64,
                    data: p.metadata.slice(start..end),
                };
                Message::Extended {
                    id: crate::ext::LOCAL_UT_METADATA_ID,
                    payload: m.encode().into(),
                }
                .encode(&mut out)
                .unwrap();
                p.served += 1;
            }
        }
        out.freeze()
    }

    fn job(&mut self, id: JobId, job: Job) {
        // A web-seed leecher only downloads: the engine must never ask it to read.
        assert!(matches!(job, Job::VerifyWrite { .. }), "unexpected job");
        let result = self.written.run(Some(()), &job, None, OriginUse::default());
        self.engine.handle_job_done(self.now, id, result);
    }

    fn assert_exact(&self) {
        let mut got = Vec::new();
        for (p, b) in self.written.pieces_of(()) {
            assert_eq!(p as usize, got.len() / self.piece_length as usize);
            got.extend_from_slice(b);
        }
        assert!(got == self.content, "content differs");
    }

    fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::WebSeedError { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn stats(&self) -> Vec<WebSeedStats> {
        self.engine
            .torrent_stats(self.now, self.tid)
            .unwrap()
            .web_seeds
    }
}

#[test]
fn a_web_seed_alone_completes_a_single_file_torrent_in_runs() {
    let mut h = Harness::new(&[("x", 3 * 1024 * 1024 + 12345)], 64 * 1024, Mode::Honest);
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    let pieces = (3 * 1024 * 1024 + 12345u64).div_ceil(64 * 1024);
    assert!(
        (h.requests.len() as u64) < pieces / 4,
        "{} requests for {pieces} pieces: runs of adjacent pieces expected",
        h.requests.len()
    );
    assert!(
        h.requests[0].starts_with("/seed/my%20data bytes="),
        "{:?}",
        h.requests
    );
    assert!(h.max_open <= 4);
    assert!(h.errors().is_empty(), "{:?}", h.errors());
    let s = h.stats();
    assert_eq!(s[0].downloaded, h.content.len() as u64);
    assert_eq!(s[0].status, None);
    // Complete: the connections are closed.
    h.run(100);
    assert!(h.open.is_empty());
    assert_eq!(h.engine.ids.open(), 0);
}

#[test]
fn multi_file_torrents_map_to_per_file_urls_with_chunked_answers_and_closes() {
    let files = [
        ("a b.bin", 100_000),
        ("empty", 0),
        ("c", 5),
        ("d.dat", 200_000),
    ];
    let mut h = Harness::new(&files, 16 * 1024, Mode::ChunkedClose);
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    assert!(h
        .requests
        .iter()
        .any(|r| r.starts_with("/seed/my%20data/a%20b.bin ")));
    assert!(h
        .requests
        .iter()
        .any(|r| r.starts_with("/seed/my%20data/c bytes=0-4")));
    assert!(!h.requests.iter().any(|r| r.contains("/empty")));
}

#[test]
fn a_seed_serving_bad_data_is_disabled_and_nothing_bad_is_written() {
    let files = [("good", 64 * 1024), ("bad", 64 * 1024)];
    let mut h = Harness::new(
        &files,
        16 * 1024,
        Mode::Corrupt("/seed/my%20data/bad".into()),
    );
    assert!(!h.run(100_000));
    // Only verified pieces were written; the bad file's pieces are not among them.
    for p in 4..8 {
        assert!(h.written.get((), p).is_none());
    }
    let errors = h.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("disabled") && e.contains("hash check")),
        "{errors:?}"
    );
    assert!(h.stats()[0]
        .status
        .as_deref()
        .unwrap()
        .starts_with("disabled"));
    assert!(h.open.is_empty());
    let before = h.requests.len();
    h.run(1000);
    assert_eq!(
        h.requests.len(),
        before,
        "a disabled seed is not asked again"
    );
}

#[test]
fn busy_answers_back_off_then_the_seed_recovers() {
    let mut h = Harness::new(&[("x", 300_000)], 16 * 1024, Mode::Busy(2));
    let start = h.now;
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    assert!(
        h.errors().iter().any(|e| e.contains("retrying in 2s")),
        "{:?}",
        h.errors()
    );
    assert!(
        h.now >= start + Duration::from_secs(2),
        "it waited for Retry-After"
    );
}

#[test]
fn a_missing_file_is_dropped_for_that_seed_only() {
    let files = [("a", 64 * 1024), ("b", 64 * 1024), ("c", 64 * 1024)];
    let mut h = Harness::new(&files, 16 * 1024, Mode::Missing("/seed/my%20data/b".into()));
    assert!(!h.run(100_000));
    let have: Vec<u32> = h.written.pieces_of(()).map(|(p, _)| p).collect();
    assert_eq!(
        have,
        vec![0, 1, 2, 3, 8, 9, 10, 11],
        "every piece outside b"
    );
    let asked_b = h.requests.iter().filter(|r| r.contains("/b ")).count();
    assert!(
        (1..=4).contains(&asked_b),
        "at most the connections in flight: {:?}",
        h.requests
    );
    assert!(h.errors().iter().any(|e| e.contains("does not have")));
    assert_eq!(h.stats()[0].status, None, "the seed stays usable");
}

#[test]
fn a_server_that_ignores_range_is_refused() {
    let mut h = Harness::new(&[("x", 300_000)], 16 * 1024, Mode::IgnoreRange);
    assert!(!h.run(10_000));
    assert!(h.written.pieces().is_empty());
    assert!(
        h.errors()
            .iter()
            .any(|e| e.contains("ignored the Range header")),
        "{:?}",
        h.errors()
    );
}

#[test]
fn a_silent_server_times_out_and_is_retried() {
    let mut h = Harness::new(&[("x", 100_000)], 16 * 1024, Mode::SilentOnce);
    let start = h.now;
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    assert!(
        h.errors()
            .iter()
            .any(|e| e.contains("no data from the server")),
        "{:?}",
        h.errors()
    );
    assert!(h.now >= start + Duration::from_secs(30));
}

#[test]
fn redirects_are_followed() {
    let mut h = Harness::new(&[("x", 100_000)], 16 * 1024, Mode::Redirect);
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    assert!(h.requests.iter().any(|r| r.starts_with("/moved/seed/")));
}

#[test]
fn runs_respect_the_pending_memory_cap() {
    let config = EngineConfig {
        max_pending_piece_bytes: 256 * 1024,
        ..EngineConfig::default()
    };
    let mut h = Harness::with(&[("x", 2 * 1024 * 1024)], 32 * 1024, Mode::Honest, config);
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
}

#[test]
fn a_connection_closed_before_the_answer_is_retried_at_once() {
    let mut config = EngineConfig::default();
    config.webseed.run_bytes = 64 * 1024;
    let mut h = Harness::with(&[("x", 600_000)], 16 * 1024, Mode::DropSecond, config);
    let start = h.now;
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    assert!(h.errors().is_empty(), "{:?}", h.errors());
    assert_eq!(h.now, start, "no back-off");
    assert!(h.requests.len() >= 12, "{:?}", h.requests);
}

#[test]
fn redirects_to_another_host_name_resolve_it_and_later_ranges_go_there_directly() {
    let files = [("a", 300_000), ("b", 200_000), ("c", 150_000)];
    let mut config = EngineConfig::default();
    config.webseed.run_bytes = 32 * 1024;
    let mut h = Harness::with(
        &files,
        16 * 1024,
        Mode::RedirectTo("http://mirror.test:8081/moved".into()),
        config,
    );
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    assert!(h.errors().is_empty(), "{:?}", h.errors());
    assert_eq!(h.resolved, vec!["mirror.test".to_owned()], "one lookup");
    let origin = h.requests_at[&SERVER];
    let mirror = h.requests_at[&MIRROR];
    // Each file is redirected at most once per connection in flight; later ranges of a file go
    // to the mirror directly.
    assert!(
        origin as usize <= files.len() * 4,
        "{origin} {:?}",
        h.requests
    );
    assert!(mirror > 2 * origin, "{mirror} vs {origin}");
    assert!(h.max_open_at[&MIRROR] <= 4);
    assert!(h.server_of.values().all(|(_, tls)| tls.is_none()));
    assert_eq!(h.stats()[0].downloaded, h.content.len() as u64);
}

#[test]
fn https_seeds_follow_redirects_to_other_https_hosts_with_their_names() {
    let mut h = Harness::with_urls(
        &[("x", 200_000)],
        16 * 1024,
        Mode::RedirectTo("https://mirror.test:8081/moved".into()),
        EngineConfig::default(),
        &["https://origin.test:8080/seed/"],
    );
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    assert_eq!(h.resolved, vec!["origin.test", "mirror.test"]);
    // Every TLS connection names the host it connects to (for SNI and the certificate check).
    for (addr, tls) in h.server_of.values() {
        let want = if *addr == MIRROR {
            "mirror.test"
        } else {
            "origin.test"
        };
        assert_eq!(tls.as_deref(), Some(want));
    }
}

#[test]
fn a_redirect_from_https_down_to_http_is_refused() {
    let mut h = Harness::with_urls(
        &[("x", 200_000)],
        16 * 1024,
        Mode::RedirectTo("http://mirror.test:8081/moved".into()),
        EngineConfig::default(),
        &["https://origin.test:8080/seed/"],
    );
    assert!(!h.run(10_000));
    assert!(h.written.pieces().is_empty());
    assert!(!h.requests_at.contains_key(&MIRROR));
    assert!(!h.resolved.contains(&"mirror.test".to_owned()));
    let errors = h.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("disabled") && e.contains("https to plain http")),
        "{errors:?}"
    );
}

#[test]
fn redirect_loops_between_hosts_stop_after_five_hops() {
    let mut h = Harness::new(&[("x", 100_000)], 16 * 1024, Mode::RedirectLoop);
    assert!(!h.run(10_000));
    assert!(h.written.pieces().is_empty());
    let errors = h.errors();
    assert!(
        errors.iter().any(|e| e.contains("more than 5 redirects")),
        "{errors:?}"
    );
    // Followed from origin to mirror and back: both were asked, a bounded number of times.
    assert!(h.requests_at[&MIRROR] >= 2);
    assert!(h.requests.len() <= 4 * 6, "{:?}", h.requests);
}

#[test]
fn the_connection_bound_applies_to_the_redirect_target_host() {
    let mut config = EngineConfig::default();
    config.webseed.max_conns_per_seed = 2;
    config.webseed.run_bytes = 32 * 1024;
    let mut h = Harness::with_urls(
        &[("x", 1_000_000)],
        16 * 1024,
        Mode::RedirectTo("http://mirror.test:8081/moved".into()),
        config,
        &["http://10.0.0.9:8080/seed/", "http://10.0.0.11:8080/seed/"],
    );
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    // Two seeds, two connections each, but one target host: at most two connections to it.
    assert!(h.max_open_at[&MIRROR] <= 2, "{:?}", h.max_open_at);
    assert!(h.requests_at[&MIRROR] > 4);
}

#[test]
fn an_unresolvable_redirect_target_backs_off_and_is_forgotten() {
    let mut h = Harness::new(
        &[("x", 100_000)],
        16 * 1024,
        Mode::RedirectTo("http://nowhere.test/moved".into()),
    );
    assert!(!h.run(2_000));
    assert!(h.written.pieces().is_empty());
    let errors = h.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("cannot resolve nowhere.test") && e.contains("retrying")),
        "{errors:?}"
    );
    // After each back-off the file is asked at its own URL again (the redirect is not trusted
    // forever).
    assert!(h.requests_at[&SERVER] >= 2, "{:?}", h.requests);
}

#[test]
fn a_magnet_links_web_seeds_finish_the_download_once_a_peer_gave_the_metadata() {
    let files = [("a", 300_000), ("b", 150_000)];
    // The info dictionary a peer sends has no `url-list`: the link's `ws=` is all there is.
    let (meta, content, by_path) = build("my data", &files, 16 * 1024, &[]);
    assert!(meta.url_list.is_empty());
    let config = EngineConfig {
        encryption: crate::mse::Policy::Disable,
        ..EngineConfig::default()
    };
    let now = Instant::from_secs(100);
    let mut engine = Engine::new(config, 7, now);
    let uri = format!(
        "magnet:?xt=urn:btih:{}&ws=http%3A%2F%2F10.0.0.9%3A8080%2Fseed%2F",
        meta.info_hash()
    );
    let link = MagnetLink::parse(&uri).unwrap();
    let tid = engine
        .add_magnet(
            now,
            AddMagnet {
                link,
                wanted_files: None,
                paused: false,
                peers: Vec::new(),
            },
        )
        .unwrap();
    let mut h = Harness::from_parts(engine, now, tid, content, by_path, 16 * 1024, Mode::Honest);
    // Known from the start (stats, `info`), but idle while there is no file list.
    assert!(!h.run(50));
    assert!(h.requests.is_empty());
    assert_eq!(h.stats()[0].url, "http://10.0.0.9:8080/seed/");
    // A peer with the metadata and no piece connects in.
    let conn = h.engine.handle_incoming(h.now, PEER).expect("accepted");
    h.open.insert(conn);
    h.peer = Some(MetaPeer {
        conn,
        decoder: Decoder::new(DEFAULT_MAX_FRAME_LEN),
        metadata: meta.info.raw().clone(),
        served: 0,
    });
    let mut hello = BytesMut::new();
    let hs = Handshake::new(
        meta.info_hash(),
        PeerId(*b"-XX0001-000000000001"),
        Reserved::FAST | Reserved::EXTENSION_PROTOCOL,
    );
    hello.extend_from_slice(&hs.to_bytes());
    let ext = OwnedValue::dict()
        .with(
            "m",
            OwnedValue::dict().with("ut_metadata", i64::from(PEER_META_ID)),
        )
        .with("metadata_size", meta.info.raw().len() as i64);
    Message::Extended {
        id: 0,
        payload: ext.encode().into(),
    }
    .encode(&mut hello)
    .unwrap();
    Message::HaveNone.encode(&mut hello).unwrap();
    h.queue.push_back((conn, Some(hello.freeze())));
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    assert!(h.peer.as_ref().unwrap().served >= 1);
    assert!(h
        .events
        .iter()
        .any(|e| matches!(e, Event::MetadataReceived { .. })));
    let s = h.stats();
    assert_eq!(
        s[0].downloaded,
        h.content.len() as u64,
        "all from the web seed"
    );
    // The web seed is part of the torrent from now on (e.g. `--save-torrent`).
    assert_eq!(
        h.engine.torrent_metainfo(tid).unwrap().url_list,
        vec!["http://10.0.0.9:8080/seed/".to_owned()]
    );
}

#[test]
fn a_redirect_targets_next_address_is_tried_when_the_first_refuses() {
    let mut h = Harness::new(
        &[("x", 200_000)],
        16 * 1024,
        Mode::RedirectTo("http://dual.test:8081/moved".into()),
    );
    let start = h.now;
    assert!(h.run(100_000), "{:?}", h.events);
    h.assert_exact();
    assert!(h.refused >= 1);
    assert_eq!(h.resolved, vec!["dual.test".to_owned()], "one lookup");
    assert!(h.errors().is_empty(), "{:?}", h.errors());
    assert_eq!(h.now, start, "no back-off: the next address at once");
}

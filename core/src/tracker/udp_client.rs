//! The BEP 15 UDP tracker client as a sans-IO state machine, and the router that multiplexes every UDP
//! tracker of a session over one socket.
//!
//! [`UdpTrackerRouter`] owns the traffic of a single UDP socket. The driver resolves `udp://host:port`
//! URLs (see [`crate::tracker::udp::UdpUrl`]) and submits announces and scrapes addressed by
//! `SocketAddr`; it sends whatever [`UdpTrackerRouter::poll_transmit`] yields, feeds every datagram the
//! socket receives to [`UdpTrackerRouter::handle_datagram`], calls
//! [`UdpTrackerRouter::handle_timeout`] at [`UdpTrackerRouter::poll_timeout`], and drains results with
//! [`UdpTrackerRouter::poll_event`].
//!
//! Per tracker address the router keeps the connection id (usable for
//! [`UdpConfig::connection_id_lifetime`], 60 s by BEP 15) and at most one connect transaction, shared by
//! every request that waits for a connection. Each datagram is retransmitted after 15·2^n seconds for
//! n = 0..=8; a connect or request that gets no answer after its ninth send fails. A reply is accepted
//! only if it comes from the tracker's address with the transaction id of an outstanding transaction and
//! the matching action (or the error action); anything else is dropped, counted in [`RouterStats`], and
//! changes no state: no timer moves. One exception to strict decoding: a bare 8-byte announce header
//! answering an announce is opentracker's refusal of an info-hash and ends the request with
//! [`RequestError::Refused`].

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::rng::{CoreRng, RngExt};
use crate::time::Instant;
use crate::tracker::udp::{
    Action, AddressFamily, AnnounceRequest, ConnectRequest, DecodeError, Request, Response,
    ScrapeRequest, MAX_DATAGRAM, MAX_SCRAPE_HASHES,
};
use crate::tracker::{AnnounceParams, AnnounceResponse, ScrapeStats};
use crate::types::InfoHash;

/// Tunables of the UDP tracker client; the defaults are BEP 15's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// The first retransmission timeout (15 s); the n-th wait is `base_timeout * 2^n`.
    pub base_timeout: Duration,
    /// The largest n of the schedule (8): a datagram is sent at most `max_retransmit_level + 1` times.
    pub max_retransmit_level: u8,
    /// How long a connection id may be used after it was received (60 s).
    pub connection_id_lifetime: Duration,
    /// Cap on outstanding requests plus results not yet drained with `poll_event`.
    pub max_requests: usize,
    /// Cap on tracker addresses tracked at once.
    pub max_trackers: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            base_timeout: Duration::from_secs(15),
            max_retransmit_level: 8,
            connection_id_lifetime: Duration::from_secs(60),
            max_requests: 4096,
            max_trackers: 1024,
        }
    }
}

impl UdpConfig {
    /// The wait after a send at retransmission level `level`: `base_timeout * 2^level`.
    pub fn timeout(&self, level: u8) -> Duration {
        let factor = 1u32.checked_shl(u32::from(level)).unwrap_or(u32::MAX);
        self.base_timeout
            .max(Duration::from_millis(1))
            .saturating_mul(factor)
    }
}

/// Length of a reply header alone: action and transaction id.
const BARE_HEADER_LEN: usize = 8;

/// Identifies one announce or scrape submitted to the router; results carry it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Why an announce or scrape failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The tracker answered with an error packet (action 3).
    #[error("tracker error: {message}")]
    Tracker {
        /// The tracker's message.
        message: String,
    },
    /// The tracker answered an announce with a bare 8-byte header (announce action and our
    /// transaction id, no interval and no peers). Debian's opentracker does this for an info-hash
    /// that is not on its whitelist instead of sending an error packet: it is a refusal, so the
    /// request ends here rather than being retransmitted for minutes.
    #[error("tracker refused the announce (an empty 8-byte announce reply, no reason given)")]
    Refused,
    /// No answer after the last retransmission.
    #[error("no {stage} reply from tracker after {sends} sends")]
    TimedOut {
        /// "connect", "announce" or "scrape": which exchange went unanswered.
        stage: &'static str,
        /// How many times that datagram was sent.
        sends: u32,
    },
}

/// Why the router refused to take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Too many requests outstanding or results undrained ([`UdpConfig::max_requests`]).
    #[error("too many outstanding UDP tracker requests (limit {limit})")]
    TooManyRequests {
        /// The limit.
        limit: usize,
    },
    /// Too many distinct tracker addresses in use ([`UdpConfig::max_trackers`]).
    #[error("too many UDP trackers in use (limit {limit})")]
    TooManyTrackers {
        /// The limit.
        limit: usize,
    },
    /// A scrape must name 1..=74 info-hashes.
    #[error("a UDP scrape carries 1..={MAX_SCRAPE_HASHES} info-hashes, got {count}")]
    ScrapeCount {
        /// Info-hashes given.
        count: usize,
    },
}

/// A result of the router, tagged with the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An announce finished.
    Announce {
        /// The request.
        id: RequestId,
        /// The tracker's answer, or why there is none.
        result: Result<AnnounceResponse, RequestError>,
    },
    /// A scrape finished.
    Scrape {
        /// The request.
        id: RequestId,
        /// The counters for each info-hash the tracker answered for, in request order.
        result: Result<Vec<(InfoHash, ScrapeStats)>, RequestError>,
    },
}

impl Event {
    /// The request this event answers.
    pub fn id(&self) -> RequestId {
        match self {
            Event::Announce { id, .. } | Event::Scrape { id, .. } => *id,
        }
    }
}

/// Where an outstanding request stands, for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPhase {
    /// Waiting for a connection id from the tracker.
    Connecting,
    /// The announce or scrape itself has been sent `sends` times.
    Sent {
        /// Sends so far.
        sends: u32,
    },
}

/// Counters for the whole socket; the `dropped_*` ones count replies that were not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouterStats {
    /// Datagrams handed out by `poll_transmit` (first sends and retransmissions).
    pub datagrams_sent: u64,
    /// Of those, retransmissions.
    pub retransmissions: u64,
    /// Datagrams fed to `handle_datagram`.
    pub datagrams_received: u64,
    /// Replies matched to a transaction and acted on.
    pub replies_accepted: u64,
    /// Dropped: from an address that is not a tracker in use.
    pub dropped_unknown_source: u64,
    /// Dropped: from a tracker, but with no outstanding transaction id of that tracker.
    pub dropped_unknown_transaction: u64,
    /// Dropped: too short, too long, unknown action or malformed body.
    pub dropped_malformed: u64,
    /// Dropped: the action does not answer the matched transaction (e.g. a connect reply to an announce).
    pub dropped_unexpected_action: u64,
    /// Requests outstanding now.
    pub requests_in_flight: usize,
    /// Tracker addresses tracked now.
    pub trackers: usize,
    /// Datagrams queued for `poll_transmit` now.
    pub queued_transmits: usize,
    /// Results queued for `poll_event` now.
    pub queued_events: usize,
    /// Armed timers now.
    pub timers: usize,
}

impl RouterStats {
    /// All dropped replies.
    pub fn dropped(&self) -> u64 {
        self.dropped_unknown_source
            + self.dropped_unknown_transaction
            + self.dropped_malformed
            + self.dropped_unexpected_action
    }
}

/// Per-tracker view for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackerStats {
    /// The tracker's address as submitted.
    pub address: SocketAddr,
    /// Until when the current connection id may be used, if there is one.
    pub connection_valid_until: Option<Instant>,
    /// Whether a connect is in flight.
    pub connecting: bool,
    /// Outstanding requests to this tracker.
    pub requests: usize,
    /// Datagrams sent to this tracker.
    pub datagrams_sent: u64,
    /// Replies from this tracker that were accepted.
    pub replies_accepted: u64,
    /// Replies from this tracker that were dropped (unknown transaction, malformed, wrong action).
    pub replies_dropped: u64,
}

/// A transaction with a timer and a datagram: a tracker's connect, or one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Txn {
    Connect(SocketAddr),
    Request(RequestId),
}

#[derive(Debug)]
struct ConnectTxn {
    transaction_id: u32,
    level: u8,
    deadline: Instant,
}

#[derive(Debug)]
struct Tracker {
    send_addr: SocketAddr,
    connection: Option<(u64, Instant)>,
    connect: Option<ConnectTxn>,
    waiting: Vec<RequestId>,
    requests: usize,
    sent: u64,
    accepted: u64,
    dropped: u64,
}

impl Tracker {
    fn connection_id(&self, now: Instant) -> Option<u64> {
        self.connection
            .filter(|&(_, until)| now < until)
            .map(|(id, _)| id)
    }
}

#[derive(Debug)]
enum Payload {
    Announce(AnnounceParams),
    Scrape(Vec<InfoHash>),
}

impl Payload {
    fn stage(&self) -> &'static str {
        match self {
            Payload::Announce(_) => "announce",
            Payload::Scrape(_) => "scrape",
        }
    }
}

#[derive(Debug)]
struct Req {
    tracker: SocketAddr,
    payload: Payload,
    transaction_id: u32,
    level: u8,
    sends: u32,
    /// `Some` while the payload is sent and its timer armed; `None` while waiting for a connection.
    sent: Option<(u64, Instant)>,
}

/// Owns the UDP tracker traffic of one socket: many trackers, many torrents. See the module docs.
#[derive(Debug)]
pub struct UdpTrackerRouter {
    config: UdpConfig,
    rng: CoreRng,
    trackers: HashMap<SocketAddr, Tracker>,
    requests: HashMap<RequestId, Req>,
    routes: HashMap<(SocketAddr, u32), Txn>,
    timers: BTreeSet<(Instant, Txn)>,
    transmit_queue: VecDeque<Txn>,
    queued: HashSet<Txn>,
    events: VecDeque<Event>,
    stats: RouterStats,
    next_id: u64,
}

/// The key a tracker address is stored under: IPv4-mapped IPv6 addresses count as IPv4, so replies
/// arriving on a dual-stack socket match trackers submitted with plain IPv4 addresses and vice versa.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Turns a wire announce reply into the transport-independent response (peers de-duplicated);
/// `stray_bytes` is the length of a tail after the peer list's last whole entry.
fn announce_response(
    reply: crate::tracker::udp::AnnounceReply,
    stray_bytes: usize,
) -> AnnounceResponse {
    let mut seen = HashSet::with_capacity(reply.peers.len());
    let peers = reply
        .peers
        .into_iter()
        .filter(|p| seen.insert(*p))
        .collect();
    AnnounceResponse {
        interval: Duration::from_secs(u64::from(reply.interval)),
        min_interval: None,
        peers,
        seeders: Some(reply.seeders),
        leechers: Some(reply.leechers),
        tracker_id: None,
        warning: None,
        stray_bytes,
    }
}

impl UdpTrackerRouter {
    /// A router with the given tunables; `rng` supplies transaction ids.
    pub fn new(config: UdpConfig, rng: CoreRng) -> Self {
        UdpTrackerRouter {
            config,
            rng,
            trackers: HashMap::new(),
            requests: HashMap::new(),
            routes: HashMap::new(),
            timers: BTreeSet::new(),
            transmit_queue: VecDeque::new(),
            queued: HashSet::new(),
            events: VecDeque::new(),
            stats: RouterStats::default(),
            next_id: 0,
        }
    }

    /// Starts an announce to the tracker at `tracker` (connecting first if no fresh connection id).
    pub fn announce(
        &mut self,
        now: Instant,
        tracker: SocketAddr,
        params: AnnounceParams,
    ) -> Result<RequestId, SubmitError> {
        self.submit(now, tracker, Payload::Announce(params))
    }

    /// Starts a scrape of 1..=74 torrents at the tracker at `tracker`.
    pub fn scrape(
        &mut self,
        now: Instant,
        tracker: SocketAddr,
        info_hashes: &[InfoHash],
    ) -> Result<RequestId, SubmitError> {
        if info_hashes.is_empty() || info_hashes.len() > MAX_SCRAPE_HASHES {
            return Err(SubmitError::ScrapeCount {
                count: info_hashes.len(),
            });
        }
        self.submit(now, tracker, Payload::Scrape(info_hashes.to_vec()))
    }

    /// Abandons a request: no event will be produced for it. Returns whether it was outstanding.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.finish(id).is_some()
    }

    /// Feeds one datagram received on the socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.stats.datagrams_received += 1;
        let key = canonical(from);
        let header = if bytes.len() > MAX_DATAGRAM {
            None
        } else {
            Response::peek_header(bytes).ok()
        };
        let Some((_, transaction_id)) = header else {
            self.stats.dropped_malformed += 1;
            if let Some(t) = self.trackers.get_mut(&key) {
                t.dropped += 1;
            }
            return;
        };
        let Some(&txn) = self.routes.get(&(key, transaction_id)) else {
            match self.trackers.get_mut(&key) {
                Some(t) => {
                    t.dropped += 1;
                    self.stats.dropped_unknown_transaction += 1;
                }
                None => self.stats.dropped_unknown_source += 1,
            }
            return;
        };
        let family = AddressFamily::of(&key);
        // A peer list with a stray tail keeps its whole entries (the tail is counted in the reply).
        let mut stray = 0;
        let decoded = match Response::decode(bytes, family) {
            Err(DecodeError::ListLength {
                what: "peer list",
                len,
                entry,
                ..
            }) if entry > 0 => {
                stray = len % entry;
                Response::decode(&bytes[..bytes.len() - stray], family)
            }
            other => other,
        };
        let response = match decoded {
            Ok(r) => r,
            Err(_) if self.is_bare_refusal(txn, bytes) => {
                // Routed by address and transaction id to exactly one of our announces: it ends
                // that request (see `RequestError::Refused`) instead of a retransmission.
                if let Txn::Request(id) = txn {
                    self.complete(id, Err(RequestError::Refused));
                }
                if let Some(t) = self.trackers.get_mut(&key) {
                    t.accepted += 1;
                }
                self.stats.replies_accepted += 1;
                return;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                if let Some(t) = self.trackers.get_mut(&key) {
                    t.dropped += 1;
                }
                return;
            }
        };
        let accepted = match txn {
            Txn::Connect(addr) => self.on_connect_reply(now, addr, response),
            Txn::Request(id) => self.on_request_reply(id, response, stray),
        };
        if let Some(t) = self.trackers.get_mut(&key) {
            if accepted {
                t.accepted += 1;
            } else {
                t.dropped += 1;
            }
        }
        if accepted {
            self.stats.replies_accepted += 1;
        } else {
            self.stats.dropped_unexpected_action += 1;
        }
    }

    /// The next datagram to send and where; call until `None` after every input.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        while let Some(txn) = self.transmit_queue.pop_front() {
            self.queued.remove(&txn);
            let out = match txn {
                Txn::Connect(addr) => self.trackers.get(&addr).and_then(|t| {
                    let c = t.connect.as_ref()?;
                    let req = Request::Connect(ConnectRequest {
                        transaction_id: c.transaction_id,
                    });
                    Some((t.send_addr, req.to_bytes()))
                }),
                Txn::Request(id) => self.requests.get(&id).and_then(|r| {
                    let (connection_id, _) = r.sent?;
                    let t = self.trackers.get(&r.tracker)?;
                    let req = match &r.payload {
                        Payload::Announce(p) => Request::Announce(AnnounceRequest {
                            connection_id,
                            transaction_id: r.transaction_id,
                            info_hash: p.info_hash,
                            peer_id: p.peer_id,
                            downloaded: p.downloaded,
                            left: p.left,
                            uploaded: p.uploaded,
                            event: p.event,
                            ip: Ipv4Addr::UNSPECIFIED,
                            key: p.key,
                            num_want: p
                                .num_want
                                .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX)),
                            port: p.port,
                        }),
                        Payload::Scrape(hashes) => Request::Scrape(ScrapeRequest {
                            connection_id,
                            transaction_id: r.transaction_id,
                            info_hashes: hashes.clone(),
                        }),
                    };
                    Some((t.send_addr, req.to_bytes()))
                }),
            };
            if let Some((dest, bytes)) = out {
                self.stats.datagrams_sent += 1;
                if let Some(t) = self.trackers.get_mut(&canonical(dest)) {
                    t.sent += 1;
                }
                return Some((dest, bytes));
            }
        }
        None
    }

    /// The earliest deadline of any transaction; after `handle_timeout(now)` it is always later than
    /// `now` (or `None` when nothing waits).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Fires every deadline at or before `now`: retransmits, reconnects, or fails transactions.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, txn)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.remove(&(deadline, txn));
            match txn {
                Txn::Connect(addr) => self.connect_timed_out(now, addr),
                Txn::Request(id) => self.request_timed_out(now, id),
            }
        }
        self.collect_idle_trackers(now);
    }

    /// The next result, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        self.stats.queued_events = self.events.len();
        event
    }

    /// Socket-wide counters, including the sizes of every internal table.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            requests_in_flight: self.requests.len(),
            trackers: self.trackers.len(),
            queued_transmits: self.transmit_queue.len(),
            queued_events: self.events.len(),
            timers: self.timers.len(),
            ..self.stats
        }
    }

    /// Counters of the tracker at `addr`, if it is in use.
    pub fn tracker_stats(&self, addr: SocketAddr) -> Option<TrackerStats> {
        self.trackers.get(&canonical(addr)).map(|t| TrackerStats {
            address: t.send_addr,
            connection_valid_until: t.connection.map(|(_, until)| until),
            connecting: t.connect.is_some(),
            requests: t.requests,
            datagrams_sent: t.sent,
            replies_accepted: t.accepted,
            replies_dropped: t.dropped,
        })
    }

    /// Where an outstanding request stands.
    pub fn request_phase(&self, id: RequestId) -> Option<RequestPhase> {
        self.requests.get(&id).map(|r| match r.sent {
            Some(_) => RequestPhase::Sent { sends: r.sends },
            None => RequestPhase::Connecting,
        })
    }

    fn submit(
        &mut self,
        now: Instant,
        tracker: SocketAddr,
        payload: Payload,
    ) -> Result<RequestId, SubmitError> {
        if self.requests.len() + self.events.len() >= self.config.max_requests {
            return Err(SubmitError::TooManyRequests {
                limit: self.config.max_requests,
            });
        }
        let key = canonical(tracker);
        if !self.trackers.contains_key(&key) {
            if self.trackers.len() >= self.config.max_trackers {
                self.collect_idle_trackers(now);
            }
            if self.trackers.len() >= self.config.max_trackers {
                return Err(SubmitError::TooManyTrackers {
                    limit: self.config.max_trackers,
                });
            }
            self.trackers.insert(
                key,
                Tracker {
                    send_addr: tracker,
                    connection: None,
                    connect: None,
                    waiting: Vec::new(),
                    requests: 0,
                    sent: 0,
                    accepted: 0,
                    dropped: 0,
                },
            );
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let transaction_id = self.fresh_transaction_id(key);
        self.routes.insert((key, transaction_id), Txn::Request(id));
        self.requests.insert(
            id,
            Req {
                tracker: key,
                payload,
                transaction_id,
                level: 0,
                sends: 0,
                sent: None,
            },
        );
        if let Some(t) = self.trackers.get_mut(&key) {
            t.requests += 1;
        }
        self.dispatch(now, id);
        Ok(id)
    }

    /// A transaction id not in use with this tracker.
    fn fresh_transaction_id(&mut self, key: SocketAddr) -> u32 {
        loop {
            let tid: u32 = self.rng.random();
            if !self.routes.contains_key(&(key, tid)) {
                return tid;
            }
        }
    }

    fn queue_transmit(&mut self, txn: Txn) {
        if self.queued.insert(txn) {
            self.transmit_queue.push_back(txn);
        }
    }

    /// Sends the request's payload if the tracker has a fresh connection id, else waits for one.
    fn dispatch(&mut self, now: Instant, id: RequestId) {
        let Some(req) = self.requests.get(&id) else {
            return;
        };
        let key = req.tracker;
        let conn = self.trackers.get(&key).and_then(|t| t.connection_id(now));
        match conn {
            Some(connection_id) => self.send_payload(now, id, connection_id),
            None => self.await_connection(now, id, key),
        }
    }

    fn send_payload(&mut self, now: Instant, id: RequestId, connection_id: u64) {
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        if let Some((_, old)) = req.sent.take() {
            self.timers.remove(&(old, Txn::Request(id)));
        }
        let deadline = now + self.config.timeout(req.level);
        req.sent = Some((connection_id, deadline));
        req.sends += 1;
        if req.sends > 1 {
            self.stats.retransmissions += 1;
        }
        self.timers.insert((deadline, Txn::Request(id)));
        self.queue_transmit(Txn::Request(id));
    }

    fn await_connection(&mut self, now: Instant, id: RequestId, key: SocketAddr) {
        if let Some(req) = self.requests.get_mut(&id) {
            if let Some((_, old)) = req.sent.take() {
                self.timers.remove(&(old, Txn::Request(id)));
            }
        }
        let needs_connect = match self.trackers.get_mut(&key) {
            Some(t) => {
                if !t.waiting.contains(&id) {
                    t.waiting.push(id);
                }
                t.connect.is_none()
            }
            None => false,
        };
        if needs_connect {
            let transaction_id = self.fresh_transaction_id(key);
            let deadline = now + self.config.timeout(0);
            if let Some(t) = self.trackers.get_mut(&key) {
                t.connect = Some(ConnectTxn {
                    transaction_id,
                    level: 0,
                    deadline,
                });
            }
            self.routes.insert((key, transaction_id), Txn::Connect(key));
            self.timers.insert((deadline, Txn::Connect(key)));
            self.queue_transmit(Txn::Connect(key));
        }
    }

    fn connect_timed_out(&mut self, now: Instant, key: SocketAddr) {
        let max = self.config.max_retransmit_level;
        let Some(t) = self.trackers.get_mut(&key) else {
            return;
        };
        let Some(c) = t.connect.as_mut() else {
            return;
        };
        if c.level >= max {
            let sends = u32::from(c.level) + 1;
            let waiting = std::mem::take(&mut t.waiting);
            self.drop_connect(key);
            for id in waiting {
                self.complete(
                    id,
                    Err(RequestError::TimedOut {
                        stage: "connect",
                        sends,
                    }),
                );
            }
        } else {
            c.level += 1;
            c.deadline = now + self.config.timeout(c.level);
            let deadline = c.deadline;
            self.stats.retransmissions += 1;
            self.timers.insert((deadline, Txn::Connect(key)));
            self.queue_transmit(Txn::Connect(key));
        }
    }

    fn request_timed_out(&mut self, now: Instant, id: RequestId) {
        let max = self.config.max_retransmit_level;
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        // The timer that fired is already out of the set.
        req.sent = None;
        if req.level >= max {
            let err = RequestError::TimedOut {
                stage: req.payload.stage(),
                sends: req.sends,
            };
            self.complete(id, Err(err));
        } else {
            req.level += 1;
            let key = req.tracker;
            match self.trackers.get(&key).and_then(|t| t.connection_id(now)) {
                Some(conn) => self.send_payload(now, id, conn),
                None => self.await_connection(now, id, key),
            }
        }
    }

    /// Whether `bytes` is a bare 8-byte announce header (action 1 and the transaction id, nothing
    /// else) answering `txn`, an outstanding announce: opentracker's way of refusing it.
    fn is_bare_refusal(&self, txn: Txn, bytes: &[u8]) -> bool {
        let Txn::Request(id) = txn else {
            return false;
        };
        bytes.len() == BARE_HEADER_LEN
            && matches!(Response::peek_header(bytes), Ok((Action::Announce, _)))
            && self
                .requests
                .get(&id)
                .is_some_and(|r| matches!(r.payload, Payload::Announce(_)))
    }

    /// Returns whether the reply was of an acceptable action.
    fn on_connect_reply(&mut self, now: Instant, key: SocketAddr, response: Response) -> bool {
        match response {
            Response::Connect(c) => {
                let lifetime = self.config.connection_id_lifetime;
                let waiting = match self.trackers.get_mut(&key) {
                    Some(t) => {
                        t.connection = Some((c.connection_id, now + lifetime));
                        std::mem::take(&mut t.waiting)
                    }
                    None => Vec::new(),
                };
                self.drop_connect(key);
                for id in waiting {
                    self.send_payload(now, id, c.connection_id);
                }
                true
            }
            Response::Error(e) => {
                let waiting = self
                    .trackers
                    .get_mut(&key)
                    .map(|t| std::mem::take(&mut t.waiting))
                    .unwrap_or_default();
                self.drop_connect(key);
                for id in waiting {
                    self.complete(
                        id,
                        Err(RequestError::Tracker {
                            message: e.message.clone(),
                        }),
                    );
                }
                true
            }
            Response::Announce(_) | Response::Scrape(_) => false,
        }
    }

    fn on_request_reply(&mut self, id: RequestId, response: Response, stray: usize) -> bool {
        let Some(req) = self.requests.get(&id) else {
            return false;
        };
        let key = req.tracker;
        match (&req.payload, response) {
            (Payload::Announce(_), Response::Announce(a)) => {
                self.complete(id, Ok(Answer::Announce(announce_response(a, stray))));
                true
            }
            (Payload::Scrape(hashes), Response::Scrape(s)) => {
                let pairs = hashes.iter().copied().zip(s.stats).collect();
                self.complete(id, Ok(Answer::Scrape(pairs)));
                true
            }
            (_, Response::Error(e)) => {
                // Trackers commonly answer an expired or unknown connection id with an error: do not
                // reuse it.
                if let Some(t) = self.trackers.get_mut(&key) {
                    t.connection = None;
                }
                self.complete(id, Err(RequestError::Tracker { message: e.message }));
                true
            }
            _ => false,
        }
    }

    fn drop_connect(&mut self, key: SocketAddr) {
        if let Some(c) = self.trackers.get_mut(&key).and_then(|t| t.connect.take()) {
            self.routes.remove(&(key, c.transaction_id));
            self.timers.remove(&(c.deadline, Txn::Connect(key)));
        }
    }

    /// Removes a request from every table; returns it.
    fn finish(&mut self, id: RequestId) -> Option<Req> {
        let req = self.requests.remove(&id)?;
        self.routes.remove(&(req.tracker, req.transaction_id));
        if let Some((_, deadline)) = req.sent {
            self.timers.remove(&(deadline, Txn::Request(id)));
        }
        let mut orphan_connect = false;
        if let Some(t) = self.trackers.get_mut(&req.tracker) {
            t.requests = t.requests.saturating_sub(1);
            t.waiting.retain(|&w| w != id);
            orphan_connect = t.waiting.is_empty() && t.connect.is_some();
        }
        if orphan_connect {
            self.drop_connect(req.tracker);
        }
        Some(req)
    }

    fn complete(&mut self, id: RequestId, result: Result<Answer, RequestError>) {
        let Some(req) = self.finish(id) else {
            return;
        };
        let event = match (req.payload, result) {
            (Payload::Announce(_), Ok(Answer::Announce(r))) => {
                Event::Announce { id, result: Ok(r) }
            }
            (Payload::Scrape(_), Ok(Answer::Scrape(s))) => Event::Scrape { id, result: Ok(s) },
            (Payload::Announce(_), Err(e)) => Event::Announce { id, result: Err(e) },
            (Payload::Scrape(_), Err(e)) => Event::Scrape { id, result: Err(e) },
            // `on_request_reply` pairs answers with payloads; a mismatch cannot be built.
            (Payload::Announce(_), Ok(Answer::Scrape(_)))
            | (Payload::Scrape(_), Ok(Answer::Announce(_))) => return,
        };
        self.events.push_back(event);
    }

    /// Forgets trackers with no requests, no connect and no usable connection id.
    fn collect_idle_trackers(&mut self, now: Instant) {
        self.trackers
            .retain(|_, t| t.requests > 0 || t.connect.is_some() || t.connection_id(now).is_some());
    }
}

/// A successful answer before it is wrapped in an [`Event`].
enum Answer {
    Announce(AnnounceResponse),
    Scrape(Vec<(InfoHash, ScrapeStats)>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::seeded;
    use crate::tracker::udp::{AnnounceReply, ConnectResponse, ErrorReply, ScrapeReply};
    use crate::tracker::AnnounceEvent;
    use crate::types::PeerId;
    use proptest::prelude::*;

    const A: &str = "10.0.0.1:6969";
    const B: &str = "10.0.0.2:6969";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn params(ih: u8) -> AnnounceParams {
        AnnounceParams {
            info_hash: InfoHash([ih; 20]),
            peer_id: PeerId([b'p'; 20]),
            port: 6881,
            uploaded: 10,
            downloaded: 20,
            left: 30,
            event: AnnounceEvent::Started,
            num_want: Some(50),
            key: 77,
        }
    }

    fn router() -> UdpTrackerRouter {
        UdpTrackerRouter::new(UdpConfig::default(), seeded(42))
    }

    fn drain(r: &mut UdpTrackerRouter) -> Vec<(SocketAddr, Request)> {
        std::iter::from_fn(|| r.poll_transmit())
            .map(|(a, b)| (a, Request::decode(&b).unwrap()))
            .collect()
    }

    fn connect_reply(tid: u32, conn: u64) -> Vec<u8> {
        Response::Connect(ConnectResponse {
            transaction_id: tid,
            connection_id: conn,
        })
        .to_bytes(AddressFamily::V4)
    }

    fn announce_reply(tid: u32, peers: &[&str], family: AddressFamily) -> Vec<u8> {
        Response::Announce(AnnounceReply {
            transaction_id: tid,
            interval: 1800,
            leechers: 3,
            seeders: 4,
            peers: peers.iter().map(|p| addr(p)).collect(),
        })
        .to_bytes(family)
    }

    /// Connects the router to `tracker` through one announce and returns the announce's request.
    fn connect(
        r: &mut UdpTrackerRouter,
        now: Instant,
        tracker: SocketAddr,
        conn: u64,
    ) -> AnnounceRequest {
        let sent = drain(r);
        let tid = match sent.as_slice() {
            [(to, Request::Connect(c))] if *to == tracker => c.transaction_id,
            other => panic!("expected one connect to {tracker}, got {other:?}"),
        };
        r.handle_datagram(now, tracker, &connect_reply(tid, conn));
        match drain(r).as_slice() {
            [(to, Request::Announce(a))] if *to == tracker => {
                assert_eq!(a.connection_id, conn);
                a.clone()
            }
            other => panic!("expected the announce, got {other:?}"),
        }
    }

    /// Finding 4 of the hostile-tracker review: an announce reply whose peer list ends in a partial
    /// entry keeps its whole entries (it used to be dropped as malformed and retransmitted).
    #[test]
    fn announce_reply_with_a_stray_tail_keeps_whole_entries() {
        let mut r = router();
        let id = r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        let a = connect(&mut r, Instant::ZERO, addr(A), 5);
        let mut reply = announce_reply(
            a.transaction_id,
            &["10.0.0.1:6881", "10.0.0.2:6882"],
            AddressFamily::V4,
        );
        reply.extend_from_slice(&[1, 2, 3]);
        r.handle_datagram(Instant::ZERO, addr(A), &reply);
        match r.poll_event() {
            Some(Event::Announce {
                id: got,
                result: Ok(resp),
            }) => {
                assert_eq!(got, id);
                assert_eq!(
                    resp.peers,
                    vec![addr("10.0.0.1:6881"), addr("10.0.0.2:6882")]
                );
                assert_eq!(resp.stray_bytes, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.stats().dropped_malformed, 0);
    }

    #[test]
    fn connect_retransmission_schedule_is_bep15_then_fails() {
        let mut r = router();
        let id = r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        let first = drain(&mut r);
        let tid = match first.as_slice() {
            [(_, Request::Connect(c))] => c.transaction_id,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.request_phase(id), Some(RequestPhase::Connecting));
        let mut t = Instant::ZERO;
        for n in 0..=8u32 {
            let deadline = t + Duration::from_secs(15 * (1 << n));
            assert_eq!(r.poll_timeout(), Some(deadline), "wait {n} is 15*2^{n} s");
            // Nothing happens between deadlines: at every whole second, nor a millisecond early.
            let early = Instant::from_millis(deadline.since_origin().as_millis() as u64 - 1);
            let seconds = (t.since_origin().as_secs() + 1..deadline.since_origin().as_secs())
                .map(Instant::from_secs);
            for at in seconds.chain([early]) {
                r.handle_timeout(at);
                assert!(
                    r.poll_transmit().is_none(),
                    "sent at {at:?}, before {deadline:?}"
                );
                assert!(r.poll_event().is_none());
                assert_eq!(r.poll_timeout(), Some(deadline));
            }
            r.handle_timeout(deadline);
            t = deadline;
            if n < 8 {
                match drain(&mut r).as_slice() {
                    [(_, Request::Connect(c))] => assert_eq!(c.transaction_id, tid),
                    other => panic!("retransmission {n}: {other:?}"),
                }
                assert!(
                    r.poll_timeout().unwrap() > t,
                    "no spin after handle_timeout"
                );
            }
        }
        assert_eq!(t, Instant::from_secs(15 * 511));
        assert!(r.poll_transmit().is_none());
        assert_eq!(
            r.poll_event(),
            Some(Event::Announce {
                id,
                result: Err(RequestError::TimedOut {
                    stage: "connect",
                    sends: 9
                })
            })
        );
        assert_eq!(r.poll_timeout(), None);
        let s = r.stats();
        assert_eq!((s.datagrams_sent, s.retransmissions), (9, 8));
        assert_eq!((s.requests_in_flight, s.timers), (0, 0));
    }

    #[test]
    fn announce_retransmits_and_reconnects_when_connection_id_expired() {
        let mut r = router();
        let t0 = Instant::ZERO;
        let id = r.announce(t0, addr(A), params(1)).unwrap();
        let a = connect(&mut r, t0, addr(A), 0xc0ffee);
        // Announce lost: resent at 15 and 45 s with the same connection and transaction ids.
        assert_eq!(r.poll_timeout(), Some(Instant::from_secs(15)));
        r.handle_timeout(Instant::from_secs(15));
        match drain(&mut r).as_slice() {
            [(_, Request::Announce(b))] => assert_eq!(b, &a),
            other => panic!("{other:?}"),
        }
        r.handle_timeout(Instant::from_secs(44));
        assert!(r.poll_transmit().is_none());
        r.handle_timeout(Instant::from_secs(45));
        assert_eq!(drain(&mut r).len(), 1);
        assert_eq!(r.request_phase(id), Some(RequestPhase::Sent { sends: 3 }));
        // At 105 s the connection id (received at 0) has expired: reconnect before re-announcing.
        assert_eq!(r.poll_timeout(), Some(Instant::from_secs(105)));
        r.handle_timeout(Instant::from_secs(105));
        assert_eq!(r.request_phase(id), Some(RequestPhase::Connecting));
        let b = connect(&mut r, Instant::from_secs(106), addr(A), 0xbeef);
        assert_eq!(b.transaction_id, a.transaction_id);
        // The announce continues at level 3: 120 s after it was sent.
        assert_eq!(r.poll_timeout(), Some(Instant::from_secs(106 + 120)));
        r.handle_datagram(
            Instant::from_secs(107),
            addr(A),
            &announce_reply(
                b.transaction_id,
                &["1.2.3.4:5", "1.2.3.4:5", "5.6.7.8:9"],
                AddressFamily::V4,
            ),
        );
        match r.poll_event() {
            Some(Event::Announce {
                id: got,
                result: Ok(resp),
            }) => {
                assert_eq!(got, id);
                assert_eq!(resp.peers, vec![addr("1.2.3.4:5"), addr("5.6.7.8:9")]);
                assert_eq!(resp.interval, Duration::from_secs(1800));
                assert_eq!((resp.seeders, resp.leechers), (Some(4), Some(3)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn announce_fails_after_ninth_send() {
        // A connection id that outlives the whole schedule isolates the announce's own retransmissions.
        let config = UdpConfig {
            connection_id_lifetime: Duration::from_secs(100_000),
            ..UdpConfig::default()
        };
        let mut r = UdpTrackerRouter::new(config, seeded(5));
        let id = r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        connect(&mut r, Instant::ZERO, addr(A), 1);
        let mut t = Instant::ZERO;
        let mut sends = 1;
        for n in 0..=8u32 {
            t += Duration::from_secs(15 << n);
            assert_eq!(r.poll_timeout(), Some(t));
            r.handle_timeout(t);
            sends += drain(&mut r).len();
        }
        assert_eq!(sends, 9);
        assert_eq!(
            r.poll_event(),
            Some(Event::Announce {
                id,
                result: Err(RequestError::TimedOut {
                    stage: "announce",
                    sends: 9
                })
            })
        );
    }

    #[test]
    fn connection_id_reused_within_60s_renewed_after() {
        let mut r = router();
        r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        let a = connect(&mut r, Instant::ZERO, addr(A), 1);
        r.handle_datagram(
            Instant::ZERO,
            addr(A),
            &announce_reply(a.transaction_id, &[], AddressFamily::V4),
        );
        assert!(r.poll_event().is_some());
        // 59 s later: announce directly with the same connection id, fresh transaction id.
        r.announce(Instant::from_secs(59), addr(A), params(2))
            .unwrap();
        match drain(&mut r).as_slice() {
            [(_, Request::Announce(b))] => {
                assert_eq!(b.connection_id, 1);
                assert_ne!(b.transaction_id, a.transaction_id);
            }
            other => panic!("{other:?}"),
        }
        // 60 s after receiving it, the id is no longer used: a new connect comes first.
        r.announce(Instant::from_secs(60), addr(A), params(3))
            .unwrap();
        assert!(matches!(
            drain(&mut r).as_slice(),
            [(_, Request::Connect(_))]
        ));
    }

    /// Debian's opentracker answers an announce of an info-hash missing from its whitelist with
    /// the bare header (action 1, the transaction id) and nothing else: a refusal that ends the
    /// request at once, not a malformed datagram to drop and retransmit for minutes. The same 8 bytes
    /// with another action, or answering a scrape, are still dropped as malformed.
    #[test]
    fn bare_announce_header_is_a_refusal() {
        let mut r = router();
        let id = r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        let a = connect(&mut r, Instant::ZERO, addr(A), 9);
        let header = |action: u32, tid: u32| {
            let mut b = action.to_be_bytes().to_vec();
            b.extend_from_slice(&tid.to_be_bytes());
            b
        };
        // A bare connect header: still malformed, the request keeps waiting.
        r.handle_datagram(Instant::from_secs(1), addr(A), &header(0, a.transaction_id));
        assert_eq!(r.stats().dropped_malformed, 1);
        assert_eq!(r.poll_event(), None);
        r.handle_datagram(Instant::from_secs(1), addr(A), &header(1, a.transaction_id));
        assert_eq!(
            r.poll_event(),
            Some(Event::Announce {
                id,
                result: Err(RequestError::Refused)
            })
        );
        assert_eq!(r.request_phase(id), None, "the request is over");
        assert!(r.poll_transmit().is_none(), "no retransmission");
        assert_eq!(r.poll_timeout(), None, "no timer left");
        assert!(RequestError::Refused.to_string().contains("refused"));

        // A bare announce header answering a scrape is not a refusal: dropped as malformed.
        let hashes = [InfoHash([3; 20])];
        let sid = r.scrape(Instant::from_secs(2), addr(A), &hashes).unwrap();
        let tid = match drain(&mut r).as_slice() {
            [(_, Request::Scrape(s))] => s.transaction_id,
            other => panic!("expected the scrape on the live connection id, got {other:?}"),
        };
        r.handle_datagram(Instant::from_secs(2), addr(A), &header(1, tid));
        assert_eq!(r.stats().dropped_malformed, 2);
        assert_eq!(r.poll_event(), None);
        assert_eq!(r.request_phase(sid), Some(RequestPhase::Sent { sends: 1 }));
    }

    #[test]
    fn bogus_replies_are_dropped_counted_and_do_not_move_timers() {
        let mut r = router();
        let id = r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        let a = connect(&mut r, Instant::ZERO, addr(A), 9);
        let deadline = r.poll_timeout();
        let now = Instant::from_secs(3);
        let good = announce_reply(a.transaction_id, &["1.1.1.1:1"], AddressFamily::V4);
        // Right transaction id, wrong address.
        r.handle_datagram(now, addr("10.9.9.9:6969"), &good);
        // Right address, wrong transaction id.
        r.handle_datagram(
            now,
            addr(A),
            &announce_reply(a.transaction_id ^ 1, &[], AddressFamily::V4),
        );
        // Right address and id, wrong action (a connect reply to an announce).
        r.handle_datagram(now, addr(A), &connect_reply(a.transaction_id, 5));
        // Too short for a header; too short for an announce reply (a peer list with a stray tail is
        // not malformed: see `announce_reply_with_a_stray_tail_keeps_whole_entries`).
        r.handle_datagram(now, addr(A), &good[..5]);
        r.handle_datagram(now, addr(A), &good[..12]);
        let s = r.stats();
        assert_eq!(s.dropped_unknown_source, 1);
        assert_eq!(s.dropped_unknown_transaction, 1);
        assert_eq!(s.dropped_unexpected_action, 1);
        assert_eq!(s.dropped_malformed, 2);
        assert_eq!(s.dropped(), 5);
        assert_eq!(r.tracker_stats(addr(A)).unwrap().replies_dropped, 4);
        assert_eq!(r.poll_event(), None);
        assert!(r.poll_transmit().is_none());
        assert_eq!(r.poll_timeout(), deadline, "timers untouched");
        assert_eq!(r.request_phase(id), Some(RequestPhase::Sent { sends: 1 }));
        r.handle_timeout(Instant::from_secs(15));
        assert_eq!(drain(&mut r).len(), 1, "retransmission still on schedule");
        // The genuine reply is still accepted.
        r.handle_datagram(Instant::from_secs(16), addr(A), &good);
        assert!(matches!(
            r.poll_event(),
            Some(Event::Announce { result: Ok(_), .. })
        ));
    }

    #[test]
    fn two_trackers_on_one_socket_get_only_their_replies() {
        let mut r = router();
        let ia = r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        let ib = r.announce(Instant::ZERO, addr(B), params(1)).unwrap();
        let sent = drain(&mut r);
        assert_eq!(sent.len(), 2);
        let tid_for = |who: &str| {
            sent.iter()
                .find(|(to, _)| *to == addr(who))
                .map(|(_, q)| q.transaction_id())
                .unwrap()
        };
        let (ta, tb) = (tid_for(A), tid_for(B));
        // B's connect reply arriving from A is not B's (and not A's: wrong transaction id for A).
        r.handle_datagram(Instant::ZERO, addr(A), &connect_reply(tb, 2));
        assert_eq!(r.stats().dropped_unknown_transaction, 1);
        r.handle_datagram(Instant::ZERO, addr(A), &connect_reply(ta, 1));
        r.handle_datagram(Instant::ZERO, addr(B), &connect_reply(tb, 2));
        let sent = drain(&mut r);
        let ann = |who: &str| match sent.iter().find(|(to, _)| *to == addr(who)) {
            Some((_, Request::Announce(a))) => a.clone(),
            other => panic!("{other:?}"),
        };
        let (aa, ab) = (ann(A), ann(B));
        assert_eq!((aa.connection_id, ab.connection_id), (1, 2));
        r.handle_datagram(
            Instant::ZERO,
            addr(B),
            &announce_reply(ab.transaction_id, &["2.2.2.2:2"], AddressFamily::V4),
        );
        r.handle_datagram(
            Instant::ZERO,
            addr(B),
            &announce_reply(aa.transaction_id, &["6.6.6.6:6"], AddressFamily::V4),
        );
        r.handle_datagram(
            Instant::ZERO,
            addr(A),
            &announce_reply(aa.transaction_id, &["1.1.1.1:1"], AddressFamily::V4),
        );
        let mut got = HashMap::new();
        while let Some(Event::Announce { id, result }) = r.poll_event() {
            got.insert(id, result.unwrap().peers);
        }
        assert_eq!(got[&ia], vec![addr("1.1.1.1:1")]);
        assert_eq!(got[&ib], vec![addr("2.2.2.2:2")]);
        assert_eq!(r.stats().dropped_unknown_transaction, 2);
    }

    #[test]
    fn many_requests_share_one_connect() {
        let mut r = router();
        let ids: Vec<_> = (0..5)
            .map(|i| r.announce(Instant::ZERO, addr(A), params(i)).unwrap())
            .collect();
        let sent = drain(&mut r);
        assert_eq!(sent.len(), 1, "one connect for five announces");
        r.handle_datagram(
            Instant::ZERO,
            addr(A),
            &connect_reply(sent[0].1.transaction_id(), 3),
        );
        let sent = drain(&mut r);
        assert_eq!(sent.len(), 5);
        let tids: HashSet<u32> = sent.iter().map(|(_, q)| q.transaction_id()).collect();
        assert_eq!(tids.len(), 5, "fresh transaction id per request");
        assert!(r.cancel(ids[0]));
        assert!(!r.cancel(ids[0]));
    }

    #[test]
    fn error_packets_surface_with_their_message() {
        let mut r = router();
        let id = r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        let a = connect(&mut r, Instant::ZERO, addr(A), 9);
        let err = Response::Error(ErrorReply {
            transaction_id: a.transaction_id,
            message: "torrent not registered".into(),
        })
        .to_bytes(AddressFamily::V4);
        r.handle_datagram(Instant::from_secs(1), addr(A), &err);
        assert_eq!(
            r.poll_event(),
            Some(Event::Announce {
                id,
                result: Err(RequestError::Tracker {
                    message: "torrent not registered".into()
                })
            })
        );
        // The connection id is not trusted after an error.
        r.announce(Instant::from_secs(2), addr(A), params(1))
            .unwrap();
        assert!(matches!(
            drain(&mut r).as_slice(),
            [(_, Request::Connect(_))]
        ));
    }

    #[test]
    fn ipv6_tracker_scrape_and_announce() {
        let v6 = addr("[2001:db8::1]:6969");
        let mut r = router();
        let hashes = [InfoHash([1; 20]), InfoHash([2; 20])];
        assert!(matches!(
            r.scrape(Instant::ZERO, v6, &[]),
            Err(SubmitError::ScrapeCount { count: 0 })
        ));
        let sid = r.scrape(Instant::ZERO, v6, &hashes).unwrap();
        let aid = r.announce(Instant::ZERO, v6, params(1)).unwrap();
        let sent = drain(&mut r);
        r.handle_datagram(
            Instant::ZERO,
            v6,
            &connect_reply(sent[0].1.transaction_id(), 4),
        );
        for (to, q) in drain(&mut r) {
            assert_eq!(to, v6);
            let reply = match q {
                Request::Scrape(s) => Response::Scrape(ScrapeReply {
                    transaction_id: s.transaction_id,
                    stats: vec![
                        ScrapeStats {
                            seeders: 1,
                            completed: 2,
                            leechers: 3,
                        },
                        ScrapeStats {
                            seeders: 4,
                            completed: 5,
                            leechers: 6,
                        },
                    ],
                }),
                Request::Announce(a) => Response::Announce(AnnounceReply {
                    transaction_id: a.transaction_id,
                    interval: 60,
                    leechers: 0,
                    seeders: 1,
                    peers: vec![addr("[2001:db8::2]:51413")],
                }),
                Request::Connect(_) => panic!("unexpected connect"),
            };
            r.handle_datagram(Instant::ZERO, to, &reply.to_bytes(AddressFamily::V6));
        }
        let mut events: Vec<_> = std::iter::from_fn(|| r.poll_event()).collect();
        events.sort_by_key(|e| e.id());
        assert_eq!(events[0].id(), sid);
        assert_eq!(
            events[0],
            Event::Scrape {
                id: sid,
                result: Ok(vec![
                    (
                        hashes[0],
                        ScrapeStats {
                            seeders: 1,
                            completed: 2,
                            leechers: 3
                        }
                    ),
                    (
                        hashes[1],
                        ScrapeStats {
                            seeders: 4,
                            completed: 5,
                            leechers: 6
                        }
                    ),
                ])
            }
        );
        match &events[1] {
            Event::Announce {
                id,
                result: Ok(resp),
            } => {
                assert_eq!(*id, aid);
                assert_eq!(resp.peers, vec![addr("[2001:db8::2]:51413")]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mapped_ipv4_source_matches_ipv4_tracker() {
        let mut r = router();
        r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        let sent = drain(&mut r);
        let mapped = addr("[::ffff:10.0.0.1]:6969");
        r.handle_datagram(
            Instant::ZERO,
            mapped,
            &connect_reply(sent[0].1.transaction_id(), 8),
        );
        assert_eq!(r.stats().replies_accepted, 1);
    }

    #[test]
    fn submissions_are_capped() {
        let config = UdpConfig {
            max_requests: 3,
            max_trackers: 2,
            ..UdpConfig::default()
        };
        let mut r = UdpTrackerRouter::new(config, seeded(1));
        r.announce(Instant::ZERO, addr(A), params(1)).unwrap();
        r.announce(Instant::ZERO, addr(B), params(1)).unwrap();
        assert_eq!(
            r.announce(Instant::ZERO, addr("10.0.0.3:1"), params(1)),
            Err(SubmitError::TooManyTrackers { limit: 2 })
        );
        r.announce(Instant::ZERO, addr(A), params(2)).unwrap();
        assert_eq!(
            r.announce(Instant::ZERO, addr(A), params(3)),
            Err(SubmitError::TooManyRequests { limit: 3 })
        );
    }

    fn arbitrary_datagram() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            // Plausible headers: a valid action and a small transaction id space.
            (
                0u32..5,
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..80)
            )
                .prop_map(|(action, tid, body)| {
                    let mut v = action.to_be_bytes().to_vec();
                    v.extend_from_slice(&tid.to_be_bytes());
                    v.extend_from_slice(&body);
                    v
                }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic_and_stay_bounded(
            inputs in proptest::collection::vec(
                (0usize..4, arbitrary_datagram(), 0u64..200, any::<bool>()), 0..60),
        ) {
            let sources = [addr(A), addr(B), addr("[2001:db8::1]:1"), addr("9.9.9.9:9")];
            let config = UdpConfig { max_requests: 8, max_trackers: 3, ..UdpConfig::default() };
            let mut r = UdpTrackerRouter::new(config, seeded(3));
            let mut now = Instant::ZERO;
            for (i, src) in sources.iter().take(3).enumerate() {
                r.announce(now, *src, params(i as u8)).unwrap();
            }
            let mut transmits = Vec::new();
            for (src, bytes, step, also_answer) in inputs {
                now += Duration::from_secs(step);
                let from = sources[src];
                r.handle_datagram(now, from, &bytes);
                // Also echo a syntactically valid reply to the last datagram sent, so that the
                // router's deeper states are reached.
                if also_answer {
                    if let Some((to, req)) = transmits.last().cloned() {
                        let req: Request = req;
                        let reply = match req {
                            Request::Connect(c) => connect_reply(c.transaction_id, 1),
                            Request::Announce(a) => announce_reply(a.transaction_id, &[], AddressFamily::of(&to)),
                            Request::Scrape(s) => Response::Scrape(ScrapeReply { transaction_id: s.transaction_id, stats: vec![] }).to_bytes(AddressFamily::V4),
                        };
                        r.handle_datagram(now, to, &reply);
                    }
                }
                r.handle_timeout(now);
                if let Some(t) = r.poll_timeout() {
                    prop_assert!(t > now);
                }
                while let Some((to, b)) = r.poll_transmit() {
                    if let Ok(q) = Request::decode(&b) { transmits.push((to, q)); }
                }
                let _ = r.announce(now, from, params(9));
                let s = r.stats();
                prop_assert!(s.requests_in_flight + s.queued_events <= 8);
                prop_assert!(s.trackers <= 3);
                prop_assert!(s.timers <= s.requests_in_flight + s.trackers);
                prop_assert!(s.queued_transmits <= s.requests_in_flight + s.trackers);
                prop_assert!(r.routes.len() <= s.requests_in_flight + s.trackers);
                if step >= 150 {
                    while r.poll_event().is_some() {}
                }
            }
        }
    }
}

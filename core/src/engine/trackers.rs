//! Tracker glue: executes the announce orders of every torrent's [`AnnouncePolicy`] over the one UDP
//! router (BEP 15) or over HTTP exchanges on connections the driver opens, resolving host names
//! through the driver (cached per host), and collects the outcomes for the policies.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::time::Instant;
use crate::tracker::announce::{AnnounceOrder, AnnouncePolicy, Progress, TrackerHandle};
use crate::tracker::http::{
    announce_url, parse_announce_response, parse_scrape_response, scrape_url,
};
use crate::tracker::http_client::{Exchange, ExchangeConfig, Outcome};
use crate::tracker::udp::UdpUrl;
use crate::tracker::udp_client::{self, RequestId, UdpTrackerRouter};
use crate::tracker::{AnnounceParams, AnnounceResponse, ScrapeStats};
use crate::types::InfoHash;

use super::conn::{ConnIds, HttpConn};
use super::io::{Output, ResolveId, TorrentId};

/// Most host names in the DNS cache. When full, expired entries go first, then the one that expires
/// soonest: a session rarely talks to more than a few dozen trackers, and a tracker list (or a peer
/// hint) cannot grow the cache past this.
const MAX_DNS_CACHE: usize = 256;

/// Most pending lookups (each waiting announce counts).
const MAX_WAITERS: usize = 1024;

/// Who asked for an announce.
#[derive(Debug, Clone)]
struct Origin {
    torrent: TorrentId,
    tracker: TrackerHandle,
    url: String,
    /// `Some(info-hash)`: this request is a scrape of that torrent, not an announce.
    scrape: Option<InfoHash>,
}

/// An announce waiting for its tracker's host name.
enum Waiter {
    Udp {
        origin: Origin,
        port: u16,
        params: AnnounceParams,
    },
    Http {
        origin: Origin,
        exchange: Box<Exchange>,
    },
    UdpScrape {
        origin: Origin,
        port: u16,
    },
}

/// An HTTP announce on a connection.
struct HttpReq {
    origin: Origin,
    exchange: Box<Exchange>,
}

/// The outcome of one announce, for its policy.
pub(crate) type TrackerResult = (
    TorrentId,
    TrackerHandle,
    String,
    Result<AnnounceResponse, String>,
);

/// The outcome of one scrape: torrent, tracker URL, counters or why there are none.
pub(crate) type ScrapeResult = (TorrentId, String, Result<ScrapeStats, String>);

/// Every tracker conversation of the engine.
pub(crate) struct TrackerGlue {
    /// The one UDP socket's router.
    pub router: UdpTrackerRouter,
    /// The announce `key`, fixed per session.
    pub key: u32,
    udp: BTreeMap<RequestId, Origin>,
    http: BTreeMap<HttpConn, HttpReq>,
    resolves: BTreeMap<ResolveId, String>,
    waiting: BTreeMap<String, Vec<Waiter>>,
    dns: BTreeMap<String, (Instant, Vec<IpAddr>)>,
    retired: BTreeMap<TorrentId, (AnnouncePolicy, Progress)>,
    results: VecDeque<TrackerResult>,
    scrape_results: VecDeque<ScrapeResult>,
    next_resolve: u64,
    /// How long a resolved host is reused.
    dns_ttl: Duration,
}

impl TrackerGlue {
    pub fn new(router: UdpTrackerRouter, key: u32, dns_ttl: Duration) -> TrackerGlue {
        TrackerGlue {
            router,
            key,
            udp: BTreeMap::new(),
            http: BTreeMap::new(),
            resolves: BTreeMap::new(),
            waiting: BTreeMap::new(),
            dns: BTreeMap::new(),
            retired: BTreeMap::new(),
            results: VecDeque::new(),
            scrape_results: VecDeque::new(),
            next_resolve: 0,
            dns_ttl,
        }
    }

    /// Keeps a removed torrent's policy until its `stopped` announces are done.
    pub fn retire(&mut self, torrent: TorrentId, policy: AnnouncePolicy) {
        if !policy.is_stopped() {
            self.retired.insert(torrent, (policy, Progress::default()));
        }
    }

    /// Orders of retired policies (`stopped` announces).
    pub fn poll_retired(&mut self, now: Instant, orders: &mut Vec<(TorrentId, AnnounceOrder)>) {
        for (tid, (policy, progress)) in self.retired.iter_mut() {
            while let Some(order) = policy.poll_announce(now, *progress) {
                orders.push((*tid, order));
            }
        }
    }

    /// The outcome of a retired policy's announce.
    pub fn retired_response(
        &mut self,
        now: Instant,
        torrent: TorrentId,
        tracker: TrackerHandle,
        result: Result<AnnounceResponse, String>,
    ) {
        if let Some((policy, _)) = self.retired.get_mut(&torrent) {
            policy.handle_response(now, tracker, result);
            policy.take_peers();
            if policy.is_stopped() {
                self.retired.remove(&torrent);
            }
        }
    }

    /// Nothing in flight and no retired policy left.
    pub fn is_idle(&self) -> bool {
        self.retired.is_empty() && self.http.is_empty() && self.udp.is_empty()
    }

    pub fn take_results(&mut self) -> Vec<TrackerResult> {
        self.results.drain(..).collect()
    }

    /// Finished scrapes, in the order they finished.
    pub fn take_scrape_results(&mut self) -> Vec<ScrapeResult> {
        self.scrape_results.drain(..).collect()
    }

    fn fail(&mut self, origin: Origin, message: String) {
        if origin.scrape.is_some() {
            self.scrape_results
                .push_back((origin.torrent, origin.url, Err(message)));
            return;
        }
        self.results
            .push_back((origin.torrent, origin.tracker, origin.url, Err(message)));
    }

    /// Starts a scrape of `info_hash` at the tracker `url` (UDP, or HTTP by the BEP 48 convention);
    /// its outcome comes out of [`TrackerGlue::take_scrape_results`].
    pub fn scrape(
        &mut self,
        now: Instant,
        torrent: TorrentId,
        url: &str,
        info_hash: InfoHash,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        let origin = Origin {
            torrent,
            tracker: TrackerHandle(usize::MAX),
            url: url.to_owned(),
            scrape: Some(info_hash),
        };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("udp://") {
            match UdpUrl::parse(url) {
                Err(e) => self.fail(origin, e.to_string()),
                Ok(u) => match u.socket_addr() {
                    Some(addr) => self.udp_scrape(now, origin, addr),
                    None => {
                        let waiter = Waiter::UdpScrape {
                            origin,
                            port: u.port,
                        };
                        self.lookup(now, u.host.clone(), u.port, waiter, outputs, ids);
                    }
                },
            }
        } else if lower.starts_with("http://") {
            match scrape_url(url, &[info_hash]) {
                Err(e) => self.fail(origin, e.to_string()),
                Ok(target) => {
                    let exchange = Box::new(Exchange::new(target, now, ExchangeConfig::default()));
                    self.http_start(now, origin, exchange, outputs, ids);
                }
            }
        } else {
            let scheme = url.split("://").next().unwrap_or("").to_owned();
            self.fail(origin, format!("unsupported tracker URL scheme `{scheme}`"));
        }
    }

    fn udp_scrape(&mut self, now: Instant, origin: Origin, addr: SocketAddr) {
        let hashes: Vec<InfoHash> = origin.scrape.into_iter().collect();
        match self.router.scrape(now, addr, &hashes) {
            Ok(id) => {
                self.udp.insert(id, origin);
            }
            Err(e) => self.fail(origin, e.to_string()),
        }
    }

    /// Starts one announce.
    pub fn dispatch(
        &mut self,
        now: Instant,
        torrent: TorrentId,
        order: AnnounceOrder,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        let origin = Origin {
            torrent,
            tracker: order.tracker,
            url: order.url.clone(),
            scrape: None,
        };
        let lower = order.url.to_ascii_lowercase();
        if lower.starts_with("udp://") {
            match UdpUrl::parse(&order.url) {
                Err(e) => self.fail(origin, e.to_string()),
                Ok(u) => match u.socket_addr() {
                    Some(addr) => self.udp_announce(now, origin, addr, order.params),
                    None => self.lookup(
                        now,
                        u.host.clone(),
                        u.port,
                        Waiter::Udp {
                            origin,
                            port: u.port,
                            params: order.params,
                        },
                        outputs,
                        ids,
                    ),
                },
            }
        } else if lower.starts_with("http://") {
            match announce_url(&order.url, &order.params, order.tracker_id.as_deref()) {
                Err(e) => self.fail(origin, e.to_string()),
                Ok(url) => {
                    let exchange = Box::new(Exchange::new(url, now, ExchangeConfig::default()));
                    self.http_start(now, origin, exchange, outputs, ids);
                }
            }
        } else {
            let scheme = order.url.split("://").next().unwrap_or("").to_owned();
            self.fail(origin, format!("unsupported tracker URL scheme `{scheme}`"));
        }
    }

    fn udp_announce(
        &mut self,
        now: Instant,
        origin: Origin,
        addr: SocketAddr,
        params: AnnounceParams,
    ) {
        match self.router.announce(now, addr, params) {
            Ok(id) => {
                self.udp.insert(id, origin);
            }
            Err(e) => self.fail(origin, e.to_string()),
        }
    }

    fn http_start(
        &mut self,
        now: Instant,
        origin: Origin,
        exchange: Box<Exchange>,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        let host = exchange.url().host().to_owned();
        let port = exchange.url().port();
        match host.parse::<IpAddr>() {
            Ok(ip) => self.http_connect(SocketAddr::new(ip, port), origin, exchange, outputs, ids),
            Err(_) => self.lookup(
                now,
                host,
                port,
                Waiter::Http { origin, exchange },
                outputs,
                ids,
            ),
        }
    }

    fn http_connect(
        &mut self,
        addr: SocketAddr,
        origin: Origin,
        exchange: Box<Exchange>,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        let conn = ids.mint_http();
        outputs.push_back(Output::Connect {
            conn: conn.id(),
            addr,
        });
        self.http.insert(conn, HttpReq { origin, exchange });
    }

    fn lookup(
        &mut self,
        now: Instant,
        host: String,
        port: u16,
        waiter: Waiter,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        if let Some((expiry, ips)) = self.dns.get(&host) {
            if *expiry > now {
                if let Some(ip) = pick_ip(ips) {
                    self.proceed(now, waiter, ip, outputs, ids);
                    return;
                }
            }
        }
        let pending: usize = self.waiting.values().map(Vec::len).sum();
        if pending >= MAX_WAITERS {
            let origin = match waiter {
                Waiter::Udp { origin, .. }
                | Waiter::Http { origin, .. }
                | Waiter::UdpScrape { origin, .. } => origin,
            };
            self.fail(
                origin,
                "too many tracker host names being resolved".to_owned(),
            );
            return;
        }
        let list = self.waiting.entry(host.clone()).or_default();
        let first = list.is_empty();
        list.push(waiter);
        if first {
            let id = ResolveId(self.next_resolve);
            self.next_resolve += 1;
            self.resolves.insert(id, host.clone());
            outputs.push_back(Output::Resolve { id, host, port });
        }
    }

    fn proceed(
        &mut self,
        now: Instant,
        waiter: Waiter,
        ip: IpAddr,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        match waiter {
            Waiter::Udp {
                origin,
                port,
                params,
            } => self.udp_announce(now, origin, SocketAddr::new(ip, port), params),
            Waiter::UdpScrape { origin, port } => {
                self.udp_scrape(now, origin, SocketAddr::new(ip, port))
            }
            Waiter::Http { origin, exchange } => {
                let port = exchange.url().port();
                self.http_connect(SocketAddr::new(ip, port), origin, exchange, outputs, ids);
            }
        }
    }

    /// A fresh id for a lookup made outside the trackers (a magnet link's `x.pe` host names), so
    /// that ids never collide with the trackers' own.
    pub fn new_resolve_id(&mut self) -> ResolveId {
        let id = ResolveId(self.next_resolve);
        self.next_resolve += 1;
        id
    }

    /// A lookup finished.
    pub fn resolved(
        &mut self,
        now: Instant,
        id: ResolveId,
        result: Result<Vec<SocketAddr>, String>,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        let Some(host) = self.resolves.remove(&id) else {
            return;
        };
        let waiters = self.waiting.remove(&host).unwrap_or_default();
        let ips: Vec<IpAddr> = match &result {
            Ok(addrs) => addrs.iter().map(SocketAddr::ip).collect(),
            Err(_) => Vec::new(),
        };
        let chosen = pick_ip(&ips);
        if let Some(ip) = chosen {
            if self.dns.len() >= MAX_DNS_CACHE && !self.dns.contains_key(&host) {
                self.dns.retain(|_, (expiry, _)| *expiry > now);
                if self.dns.len() >= MAX_DNS_CACHE {
                    let soonest = self
                        .dns
                        .iter()
                        .min_by_key(|(_, (expiry, _))| *expiry)
                        .map(|(h, _)| h.clone());
                    if let Some(h) = soonest {
                        self.dns.remove(&h);
                    }
                }
            }
            self.dns.insert(host.clone(), (now + self.dns_ttl, ips));
            for w in waiters {
                self.proceed(now, w, ip, outputs, ids);
            }
        } else {
            let message = match result {
                Err(e) => format!("could not resolve {host}: {e}"),
                Ok(_) => format!("{host} has no address"),
            };
            for w in waiters {
                let origin = match w {
                    Waiter::Udp { origin, .. }
                    | Waiter::Http { origin, .. }
                    | Waiter::UdpScrape { origin, .. } => origin,
                };
                self.fail(origin, message.clone());
            }
        }
    }

    /// Moves the router's datagrams to outputs and its results to `results`.
    pub fn pump_router(&mut self, outputs: &mut VecDeque<Output>) {
        while let Some((to, data)) = self.router.poll_transmit() {
            outputs.push_back(Output::SendDatagram {
                to,
                data: data.into(),
            });
        }
        while let Some(ev) = self.router.poll_event() {
            match ev {
                udp_client::Event::Announce { id, result } => {
                    if let Some(origin) = self.udp.remove(&id) {
                        self.results.push_back((
                            origin.torrent,
                            origin.tracker,
                            origin.url,
                            result.map_err(|e| e.to_string()),
                        ));
                    }
                }
                udp_client::Event::Scrape { id, result } => {
                    if let Some(origin) = self.udp.remove(&id) {
                        let wanted = origin.scrape;
                        let result = match result {
                            Err(e) => Err(e.to_string()),
                            Ok(list) => list
                                .into_iter()
                                .find(|(h, _)| Some(*h) == wanted)
                                .map(|(_, s)| s)
                                .ok_or_else(|| {
                                    "tracker sent no counters for the torrent".to_owned()
                                }),
                        };
                        self.scrape_results
                            .push_back((origin.torrent, origin.url, result));
                    }
                }
            }
        }
    }

    pub fn http_connected(&mut self, conn: HttpConn, outputs: &mut VecDeque<Output>) {
        if let Some(req) = self.http.get_mut(&conn) {
            while let Some(data) = req.exchange.poll_transmit() {
                outputs.push_back(Output::Send {
                    conn: conn.id(),
                    data,
                });
            }
        }
    }

    /// Ends an exchange: its connection id is released.
    fn http_remove(&mut self, conn: HttpConn, ids: &mut ConnIds) -> Option<HttpReq> {
        ids.release(conn.id());
        self.http.remove(&conn)
    }

    pub fn http_failed(&mut self, conn: HttpConn, reason: &str, ids: &mut ConnIds) {
        if let Some(req) = self.http_remove(conn, ids) {
            let host = req.exchange.url().host_header();
            self.fail(
                req.origin,
                format!("could not connect to tracker {host}: {reason}"),
            );
        }
    }

    pub fn http_read(
        &mut self,
        now: Instant,
        conn: HttpConn,
        data: &[u8],
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        if let Some(req) = self.http.get_mut(&conn) {
            req.exchange.handle_data(data);
        }
        self.http_check(now, conn, true, outputs, ids);
    }

    pub fn http_closed(
        &mut self,
        now: Instant,
        conn: HttpConn,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        if let Some(req) = self.http.get_mut(&conn) {
            req.exchange.handle_eof();
        }
        self.http_check(now, conn, false, outputs, ids);
    }

    /// Acts on an exchange's result, if it has one.
    fn http_check(
        &mut self,
        now: Instant,
        conn: HttpConn,
        open: bool,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        let Some(req) = self.http.get_mut(&conn) else {
            return;
        };
        let Some(result) = req.exchange.poll_result() else {
            if !open {
                // Closed without a result: the exchange reported nothing more; give up on it.
                if let Some(req) = self.http_remove(conn, ids) {
                    self.fail(req.origin, "tracker closed the connection".to_owned());
                }
            }
            return;
        };
        let Some(req) = self.http_remove(conn, ids) else {
            return;
        };
        if open {
            outputs.push_back(Output::Close { conn: conn.id() });
        }
        match result {
            Ok(Outcome::Body(body)) if req.origin.scrape.is_some() => {
                let wanted = req.origin.scrape;
                let result = match parse_scrape_response(&body) {
                    Err(e) => Err(e.to_string()),
                    Ok(list) => list
                        .into_iter()
                        .find(|(h, _)| Some(*h) == wanted)
                        .map(|(_, s)| s)
                        .ok_or_else(|| "tracker sent no counters for the torrent".to_owned()),
                };
                self.scrape_results
                    .push_back((req.origin.torrent, req.origin.url, result));
            }
            Ok(Outcome::Body(body)) => {
                let parsed = parse_announce_response(&body).map_err(|e| e.to_string());
                self.results.push_back((
                    req.origin.torrent,
                    req.origin.tracker,
                    req.origin.url,
                    parsed,
                ));
            }
            Ok(Outcome::Redirect(_)) => {
                self.http_start(now, req.origin, req.exchange, outputs, ids);
            }
            Err(e) => self.fail(req.origin, e.to_string()),
        }
    }

    pub fn handle_timeout(
        &mut self,
        now: Instant,
        outputs: &mut VecDeque<Output>,
        ids: &mut ConnIds,
    ) {
        if self.router.poll_timeout().is_some_and(|t| t <= now) {
            self.router.handle_timeout(now);
        }
        let due: Vec<HttpConn> = self
            .http
            .iter()
            .filter(|(_, r)| r.exchange.poll_timeout().is_some_and(|t| t <= now))
            .map(|(c, _)| *c)
            .collect();
        for conn in due {
            if let Some(req) = self.http.get_mut(&conn) {
                req.exchange.handle_timeout(now);
            }
            self.http_check(now, conn, true, outputs, ids);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let http = self
            .http
            .values()
            .filter_map(|r| r.exchange.poll_timeout())
            .min();
        // Retired policies still have deadlines of their own (`stopped` retries, the per-attempt
        // budget); without them a shutdown could wait on an unrelated timer.
        let retired = self
            .retired
            .values()
            .filter_map(|(policy, _)| policy.poll_timeout())
            .min();
        [self.router.poll_timeout(), http, retired]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Prefers an IPv4 address (what most trackers and our sockets serve best).
fn pick_ip(ips: &[IpAddr]) -> Option<IpAddr> {
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .copied()
}

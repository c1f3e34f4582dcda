//! The per-torrent announce policy: which tracker to announce to, when, and with which event
//! (BEP 3 events, BEP 12 tiers), independent of the transport (UDP or HTTP).
//!
//! The policy is sans-IO like the rest of the core. [`AnnouncePolicy::poll_announce`] yields
//! [`AnnounceOrder`]s ("announce now to tracker U with params P"); the driver performs each one over
//! whichever transport the URL names and hands the outcome back to
//! [`AnnouncePolicy::handle_response`] as `Result<AnnounceResponse, String>`. Call `poll_announce` until it
//! returns `None` after every input (start, stop, completion, a response, a request for more peers) and
//! when [`AnnouncePolicy::poll_timeout`] is reached.
//!
//! Rules implemented:
//! - BEP 12: each tier is shuffled once; within a tier trackers are tried in order; a tracker that
//!   answers moves to the front of its tier; when every tracker of a tier has failed the next tier is
//!   tried. By default one tracker of the whole list is used at a time (BEP 12); with
//!   [`AnnounceConfig::announce_to_all_tiers`] each tier runs independently.
//! - BEP 3 events, per tracker: `started` on the first announce a tracker gets in this session;
//!   `completed` exactly once to each tracker that saw us as a leecher, after the caller reports the
//!   download finished (retried until a tracker acknowledges it); `stopped` on [`AnnouncePolicy::stop`]
//!   to every tracker that acknowledged a `started`. Event announces are not held back by `min interval`;
//!   regular ones are.
//! - `interval` and `min interval` respected; an early re-announce when the caller asks for more peers,
//!   never before `min interval`; failing trackers are backed off exponentially with jitter.
//! - Each attempt has a budget, [`AnnounceConfig::attempt_timeout`] (60 s by default). A tracker that
//!   has not answered by then counts as failed for this round: it is backed off and the next tracker of
//!   the tier (or the next tier) is tried at once. Without it, a UDP tracker that never answers would
//!   hold its tier for the whole BEP 15 retransmission schedule (15·(2^9−1) s, over two hours), and a
//!   `stopped` to it would hold up a shutdown as long. The transport request is not cancelled: the
//!   tracker stays busy (it gets no new order) until its result comes back; a late success still counts
//!   (its peers are merged, its failure cleared) but does not move the schedule, a late failure is
//!   dropped. A shutdown does not wait for such a tracker.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use crate::rng::{seeded, CoreRng, RngExt};
use crate::time::Instant;
use crate::tracker::{AnnounceEvent, AnnounceParams, AnnounceResponse};
use crate::types::{InfoHash, PeerId};
use rand::seq::SliceRandom;

/// Tunables of the announce policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// `numwant` sent with every announce except `stopped`.
    pub num_want: Option<u32>,
    /// Interval used when a tracker answers with an interval of zero.
    pub default_interval: Duration,
    /// The least time between regular announces, whatever the tracker says (also the `min interval`
    /// assumed when the tracker gives none).
    pub min_interval_floor: Duration,
    /// The most time between regular announces, whatever the tracker says.
    pub max_interval: Duration,
    /// Back-off after a tracker's first failure; it doubles with each further failure.
    pub backoff_base: Duration,
    /// The longest back-off.
    pub backoff_cap: Duration,
    /// Announce to one tracker per tier at the same time instead of one tracker overall.
    pub announce_to_all_tiers: bool,
    /// Cap on peers waiting to be drained with [`AnnouncePolicy::take_peers`]; past it the waiting peers
    /// are a uniform random sample of those offered (not the first ones).
    pub max_pending_peers: usize,
    /// Cap on the set used to de-duplicate peers; it is cleared when full.
    pub max_known_peers: usize,
    /// How long one announce may go unanswered before the tracker counts as failed for this round and
    /// the next one is tried (see the module docs). At least 1 ms.
    pub attempt_timeout: Duration,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            num_want: Some(50),
            default_interval: Duration::from_secs(30 * 60),
            min_interval_floor: Duration::from_secs(60),
            max_interval: Duration::from_secs(4 * 60 * 60),
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(30 * 60),
            announce_to_all_tiers: false,
            max_pending_peers: 2_000,
            max_known_peers: 20_000,
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

/// Identifies one tracker URL of a policy (stable for the policy's life, unaffected by promotion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackerHandle(pub usize);

/// The transfer counters the caller reports at announce time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Payload bytes uploaded since this session's `started`.
    pub uploaded: u64,
    /// Payload bytes downloaded since this session's `started`.
    pub downloaded: u64,
    /// Bytes still missing from the selected files.
    pub left: u64,
}

/// "Announce now to this tracker with these parameters."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceOrder {
    /// Which tracker; pass it back with the result.
    pub tracker: TrackerHandle,
    /// The tracker's URL (any scheme; the driver picks the transport).
    pub url: String,
    /// What to announce.
    pub params: AnnounceParams,
    /// The `tracker id` this tracker gave earlier, to echo (HTTP only).
    pub tracker_id: Option<Vec<u8>>,
}

/// What a request in flight is doing, as far as the transport tells the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlightPhase {
    /// Establishing a connection (UDP connect, TCP/TLS handshake).
    Connecting,
    /// The announce itself is on its way.
    Announcing,
}

/// A tracker's state for front ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerState {
    /// Not contacted in this session (yet).
    Idle,
    /// A request is connecting.
    Connecting,
    /// A request is announcing.
    Announcing,
    /// The last announce succeeded.
    Ok,
    /// The last announce failed; the tracker may be retried now.
    Error {
        /// Why.
        message: String,
    },
    /// The last announce failed; the tracker is not retried before `until`.
    BackingOff {
        /// When it may be retried.
        until: Instant,
        /// Why it failed.
        message: String,
    },
}

/// A tracker's status for front ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerStatus {
    /// The handle.
    pub handle: TrackerHandle,
    /// The URL.
    pub url: String,
    /// Tier index (0 is the first tier).
    pub tier: usize,
    /// Position within the tier now (0 is tried first).
    pub position: usize,
    /// State now.
    pub state: TrackerState,
    /// When the last successful announce was answered.
    pub last_announce: Option<Instant>,
    /// When this tracker will next be announced to, if it is the one scheduled.
    pub next_announce: Option<Instant>,
    /// Seeders the tracker reported last.
    pub seeders: Option<u32>,
    /// Leechers the tracker reported last.
    pub leechers: Option<u32>,
    /// Number of peers the last answer carried.
    pub peers_returned: Option<usize>,
    /// Consecutive failures.
    pub failures: u32,
    /// The tracker's last warning message.
    pub warning: Option<String>,
}

#[derive(Debug)]
struct InFlight {
    event: AnnounceEvent,
    left: u64,
    phase: InFlightPhase,
    /// When the attempt's budget runs out.
    deadline: Instant,
    /// The budget ran out: the failure is recorded and the scope has moved on; the result, when it
    /// comes, only updates this tracker.
    abandoned: bool,
}

impl InFlight {
    /// In flight and still counted on (not abandoned).
    fn live(&self) -> bool {
        !self.abandoned
    }
}

#[derive(Debug)]
struct Entry {
    url: String,
    tier: usize,
    in_flight: Option<InFlight>,
    last_error: Option<String>,
    backoff_until: Option<Instant>,
    failures: u32,
    started_ok: bool,
    seen_as_leecher: bool,
    completed_sent: bool,
    stopped_sent: bool,
    tracker_id: Option<Vec<u8>>,
    last_announce: Option<Instant>,
    seeders: Option<u32>,
    leechers: Option<u32>,
    peers_returned: Option<usize>,
    warning: Option<String>,
}

impl Entry {
    fn available(&self, now: Instant) -> bool {
        self.in_flight.is_none()
            && match self.backoff_until {
                Some(until) => until <= now,
                None => true,
            }
    }
}

/// A group of tiers announced to one tracker at a time: all tiers (BEP 12) or one tier each.
#[derive(Debug)]
struct Scope {
    tiers: Range<usize>,
    next_announce: Instant,
    earliest: Instant,
    want_peers: bool,
    in_flight: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idle,
    Running,
    Stopping,
}

/// The announce policy of one torrent. See the module docs.
#[derive(Debug)]
pub struct AnnouncePolicy {
    info_hash: InfoHash,
    peer_id: PeerId,
    port: u16,
    key: u32,
    config: AnnounceConfig,
    rng: CoreRng,
    trackers: Vec<Entry>,
    tiers: Vec<Vec<usize>>,
    scopes: Vec<Scope>,
    mode: Mode,
    complete: bool,
    pending_peers: VecDeque<SocketAddr>,
    known_peers: HashSet<SocketAddr>,
    /// New peers offered since the pending list was last drained (the reservoir sample's population).
    offered: u64,
}

impl AnnouncePolicy {
    /// A policy for the torrent `info_hash` over `tiers` (the `announce-list`, or `[[announce]]`).
    /// Duplicate URLs and empty tiers are dropped; each tier is shuffled once with `rng`, which also
    /// seeds the policy's own generator (back-off jitter).
    pub fn new(
        info_hash: InfoHash,
        peer_id: PeerId,
        port: u16,
        key: u32,
        tiers: &[Vec<String>],
        config: AnnounceConfig,
        rng: &mut CoreRng,
    ) -> Self {
        let mut seen = HashSet::new();
        let mut trackers = Vec::new();
        let mut tier_list = Vec::new();
        for tier in tiers {
            let mut members = Vec::new();
            for url in tier {
                if seen.insert(url.clone()) {
                    members.push(trackers.len());
                    trackers.push(Entry {
                        url: url.clone(),
                        tier: tier_list.len(),
                        in_flight: None,
                        last_error: None,
                        backoff_until: None,
                        failures: 0,
                        started_ok: false,
                        seen_as_leecher: false,
                        completed_sent: false,
                        stopped_sent: false,
                        tracker_id: None,
                        last_announce: None,
                        seeders: None,
                        leechers: None,
                        peers_returned: None,
                        warning: None,
                    });
                }
            }
            if !members.is_empty() {
                members.shuffle(rng);
                tier_list.push(members);
            }
        }
        let scope = |tiers: Range<usize>| Scope {
            tiers,
            next_announce: Instant::ZERO,
            earliest: Instant::ZERO,
            want_peers: false,
            in_flight: None,
        };
        let scopes = if tier_list.is_empty() {
            Vec::new()
        } else if config.announce_to_all_tiers {
            (0..tier_list.len()).map(|i| scope(i..i + 1)).collect()
        } else {
            vec![scope(0..tier_list.len())]
        };
        AnnouncePolicy {
            info_hash,
            peer_id,
            port,
            key,
            config,
            rng: seeded(rng.random()),
            trackers,
            tiers: tier_list,
            scopes,
            mode: Mode::Idle,
            complete: false,
            pending_peers: VecDeque::new(),
            known_peers: HashSet::new(),
            offered: 0,
        }
    }

    /// Starts (or resumes) announcing: every tracker gets `started` on its first announce of this
    /// session. The caller's counters should restart with the session too.
    pub fn start(&mut self, now: Instant) {
        self.mode = Mode::Running;
        for t in &mut self.trackers {
            t.started_ok = false;
            t.seen_as_leecher = false;
            t.completed_sent = false;
            t.stopped_sent = false;
        }
        for s in &mut self.scopes {
            s.next_announce = now;
            s.earliest = now;
        }
    }

    /// Reports that the download has finished: `completed` goes out now to each tracker that saw us
    /// leeching, once. Calling it again has no further effect.
    pub fn set_completed(&mut self, now: Instant) {
        if self.complete {
            return;
        }
        self.complete = true;
        for s in &mut self.scopes {
            s.next_announce = s.next_announce.min(now);
        }
    }

    /// Asks for an early re-announce because we need more peers; it happens once `min interval` has
    /// passed since the last successful announce (of each scope).
    pub fn want_more_peers(&mut self) {
        for s in &mut self.scopes {
            s.want_peers = true;
        }
    }

    /// Stops announcing (pause, removal, shutdown): `stopped` goes to every tracker that acknowledged a
    /// `started`. Results of requests still in flight are awaited; a late `started` success also gets a
    /// `stopped`.
    pub fn stop(&mut self, _now: Instant) {
        if self.mode == Mode::Running {
            self.mode = Mode::Stopping;
        }
    }

    /// Whether a `stop` has finished: every `stopped` sent and answered, and nothing in flight except
    /// attempts that ran out of their budget (their trackers are not waited for).
    pub fn is_stopped(&self) -> bool {
        match self.mode {
            Mode::Idle => true,
            Mode::Running => false,
            Mode::Stopping => self.trackers.iter().all(|t| match &t.in_flight {
                Some(f) if f.live() => false,
                // Did not answer within its budget: not waited for.
                Some(_) => true,
                None => !t.started_ok || t.stopped_sent,
            }),
        }
    }

    /// The next announce to perform now, if any. `progress` is the caller's honest current counters.
    pub fn poll_announce(&mut self, now: Instant, progress: Progress) -> Option<AnnounceOrder> {
        self.expire_attempts(now);
        match self.mode {
            Mode::Idle => None,
            Mode::Stopping => {
                let i = self
                    .trackers
                    .iter()
                    .position(|t| t.started_ok && !t.stopped_sent && t.in_flight.is_none())?;
                if let Some(t) = self.trackers.get_mut(i) {
                    t.stopped_sent = true;
                }
                Some(self.order(now, i, AnnounceEvent::Stopped, progress))
            }
            Mode::Running => {
                for si in 0..self.scopes.len() {
                    let Some(scope) = self.scopes.get(si) else {
                        continue;
                    };
                    let due =
                        now >= scope.next_announce || (scope.want_peers && now >= scope.earliest);
                    if scope.in_flight.is_some() || !due {
                        continue;
                    }
                    let Some(pick) = self.first_available(si, now) else {
                        continue;
                    };
                    let event = self.event_for(pick);
                    if let Some(scope) = self.scopes.get_mut(si) {
                        scope.in_flight = Some(pick);
                        scope.want_peers = false;
                    }
                    return Some(self.order(now, pick, event, progress));
                }
                None
            }
        }
    }

    /// When `poll_announce` may next have something to do without any other input: a scheduled
    /// announce, or the end of an attempt's budget (also while stopping). After
    /// `poll_announce(now, ..)` returned `None`, this is later than `now` (or `None`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let budget = self
            .trackers
            .iter()
            .filter_map(|t| t.in_flight.as_ref())
            .filter(|f| f.live())
            .map(|f| f.deadline)
            .min();
        match (self.scope_timeout(), budget) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When a scope next wants to announce (and has a tracker to announce to); `None` unless running.
    fn scope_timeout(&self) -> Option<Instant> {
        if self.mode != Mode::Running {
            return None;
        }
        self.scopes
            .iter()
            .filter(|s| s.in_flight.is_none())
            .filter_map(|s| {
                let due = if s.want_peers {
                    s.next_announce.min(s.earliest)
                } else {
                    s.next_announce
                };
                let available = self
                    .scope_members(s)
                    .filter_map(|i| self.trackers.get(i))
                    .filter(|t| t.in_flight.is_none())
                    .map(|t| t.backoff_until.unwrap_or(Instant::ZERO))
                    .min()?;
                Some(due.max(available))
            })
            .min()
    }

    /// Notes what an in-flight request is doing, for [`TrackerStatus::state`].
    pub fn note_phase(&mut self, tracker: TrackerHandle, phase: InFlightPhase) {
        if let Some(f) = self
            .trackers
            .get_mut(tracker.0)
            .and_then(|t| t.in_flight.as_mut())
        {
            f.phase = phase;
        }
    }

    /// Takes back the outcome of an [`AnnounceOrder`]. Results for a tracker with nothing in flight
    /// (stale, duplicated) are ignored.
    pub fn handle_response(
        &mut self,
        now: Instant,
        tracker: TrackerHandle,
        result: Result<AnnounceResponse, String>,
    ) {
        let i = tracker.0;
        let Some(flight) = self.trackers.get_mut(i).and_then(|t| t.in_flight.take()) else {
            return;
        };
        if flight.abandoned {
            // Its failure was recorded when the budget ran out and the scope has moved on: a late
            // success still updates this tracker (and its peers are welcome), a late failure is dropped.
            if let Ok(resp) = result {
                self.on_success(now, i, flight, None, resp);
            }
            return;
        }
        let scope_index = self.scopes.iter().position(|s| s.in_flight == Some(i));
        if let Some(s) = scope_index.and_then(|si| self.scopes.get_mut(si)) {
            s.in_flight = None;
        }
        match result {
            Ok(resp) => self.on_success(now, i, flight, scope_index, resp),
            Err(message) => self.on_failure(now, i, flight.event, scope_index, message),
        }
    }

    /// Peers learned from any tracker since the last call, each reported once.
    pub fn take_peers(&mut self) -> Vec<SocketAddr> {
        self.offered = 0;
        self.pending_peers.drain(..).collect()
    }

    /// The handle of a tracker URL.
    pub fn handle_for_url(&self, url: &str) -> Option<TrackerHandle> {
        self.trackers
            .iter()
            .position(|t| t.url == url)
            .map(TrackerHandle)
    }

    /// Status of every tracker, in tier order, for front ends.
    pub fn tracker_status(&self, now: Instant) -> Vec<TrackerStatus> {
        let scheduled: Vec<(usize, Instant)> = self
            .scopes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_flight.is_none() && self.mode == Mode::Running)
            .filter_map(|(si, s)| {
                let pick = self.first_available(si, now).or_else(|| {
                    self.scope_members(s)
                        .filter(|&i| self.trackers.get(i).is_some_and(|t| t.in_flight.is_none()))
                        .min_by_key(|&i| self.trackers.get(i).and_then(|t| t.backoff_until))
                })?;
                let backoff = self
                    .trackers
                    .get(pick)
                    .and_then(|t| t.backoff_until)
                    .unwrap_or(Instant::ZERO);
                Some((pick, s.next_announce.max(backoff)))
            })
            .collect();
        let mut out = Vec::with_capacity(self.trackers.len());
        for tier in &self.tiers {
            for (position, &i) in tier.iter().enumerate() {
                let Some(t) = self.trackers.get(i) else {
                    continue;
                };
                let live = t.in_flight.as_ref().filter(|f| f.live());
                let state = match (live, &t.last_error, t.backoff_until) {
                    (Some(f), _, _) => match f.phase {
                        InFlightPhase::Connecting => TrackerState::Connecting,
                        InFlightPhase::Announcing => TrackerState::Announcing,
                    },
                    (None, Some(m), Some(until)) if until > now => TrackerState::BackingOff {
                        until,
                        message: m.clone(),
                    },
                    (None, Some(m), _) => TrackerState::Error { message: m.clone() },
                    (None, None, _) if t.last_announce.is_some() => TrackerState::Ok,
                    (None, None, _) => TrackerState::Idle,
                };
                out.push(TrackerStatus {
                    handle: TrackerHandle(i),
                    url: t.url.clone(),
                    tier: t.tier,
                    position,
                    state,
                    last_announce: t.last_announce,
                    next_announce: scheduled.iter().find(|(p, _)| *p == i).map(|&(_, at)| at),
                    seeders: t.seeders,
                    leechers: t.leechers,
                    peers_returned: t.peers_returned,
                    failures: t.failures,
                    warning: t.warning.clone(),
                });
            }
        }
        out
    }

    fn scope_members<'a>(&'a self, scope: &Scope) -> impl Iterator<Item = usize> + 'a {
        self.tiers
            .get(scope.tiers.clone())
            .unwrap_or(&[])
            .iter()
            .flat_map(|tier| tier.iter().copied())
    }

    /// The first tracker of the scope, in tier order, that is neither backing off nor busy.
    fn first_available(&self, si: usize, now: Instant) -> Option<usize> {
        let scope = self.scopes.get(si)?;
        self.scope_members(scope)
            .find(|&i| self.trackers.get(i).is_some_and(|t| t.available(now)))
    }

    fn event_for(&self, i: usize) -> AnnounceEvent {
        match self.trackers.get(i) {
            Some(t) if !t.started_ok => AnnounceEvent::Started,
            Some(t) if self.complete && t.seen_as_leecher && !t.completed_sent => {
                AnnounceEvent::Completed
            }
            _ => AnnounceEvent::None,
        }
    }

    fn order(
        &mut self,
        now: Instant,
        i: usize,
        event: AnnounceEvent,
        progress: Progress,
    ) -> AnnounceOrder {
        let deadline = now + self.config.attempt_timeout.max(Duration::from_millis(1));
        let num_want = match event {
            AnnounceEvent::Stopped => Some(0),
            _ => self.config.num_want,
        };
        let params = AnnounceParams {
            info_hash: self.info_hash,
            peer_id: self.peer_id,
            port: self.port,
            uploaded: progress.uploaded,
            downloaded: progress.downloaded,
            left: progress.left,
            event,
            num_want,
            key: self.key,
        };
        let (url, tracker_id) = match self.trackers.get_mut(i) {
            Some(t) => {
                t.in_flight = Some(InFlight {
                    event,
                    left: progress.left,
                    phase: InFlightPhase::Announcing,
                    deadline,
                    abandoned: false,
                });
                (t.url.clone(), t.tracker_id.clone())
            }
            None => (String::new(), None),
        };
        AnnounceOrder {
            tracker: TrackerHandle(i),
            url,
            params,
            tracker_id,
        }
    }

    fn on_success(
        &mut self,
        now: Instant,
        i: usize,
        flight: InFlight,
        scope_index: Option<usize>,
        resp: AnnounceResponse,
    ) {
        let running = self.mode == Mode::Running;
        let Some(t) = self.trackers.get_mut(i) else {
            return;
        };
        t.failures = 0;
        t.backoff_until = None;
        t.last_error = None;
        t.last_announce = Some(now);
        t.seeders = resp.seeders;
        t.leechers = resp.leechers;
        t.peers_returned = Some(resp.peers.len());
        t.warning = resp.warning.clone();
        if resp.stray_bytes > 0 {
            // Not fatal (the whole entries were used), but worth showing: a broken or hostile tracker.
            let note = format!(
                "{} stray bytes after the last whole compact peer entry (ignored)",
                resp.stray_bytes
            );
            t.warning = Some(match t.warning.take() {
                Some(w) => format!("{w}; {note}"),
                None => note,
            });
        }
        if let Some(id) = resp.tracker_id.clone() {
            t.tracker_id = Some(id);
        }
        match flight.event {
            AnnounceEvent::Stopped => {
                t.started_ok = false;
                return;
            }
            AnnounceEvent::Started => t.started_ok = true,
            AnnounceEvent::Completed => t.completed_sent = true,
            AnnounceEvent::None => {}
        }
        if flight.left > 0 {
            t.seen_as_leecher = true;
        }
        let completed_pending = self.complete && t.seen_as_leecher && !t.completed_sent;
        let tier = t.tier;
        if let Some(members) = self.tiers.get_mut(tier) {
            if let Some(pos) = members.iter().position(|&m| m == i) {
                members.remove(pos);
                members.insert(0, i);
            }
        }
        if !running {
            return;
        }
        let floor = self.config.min_interval_floor;
        // A tracker's `min interval` is capped like its `interval`: otherwise a huge value (a hostile
        // or broken tracker) would push the whole scope's next announce out of reach.
        let min_interval = resp
            .min_interval
            .unwrap_or(floor)
            .max(floor)
            .min(self.config.max_interval);
        let interval = if resp.interval.is_zero() {
            self.config.default_interval
        } else {
            resp.interval
        };
        let interval = interval.min(self.config.max_interval).max(min_interval);
        if let Some(s) = scope_index.and_then(|si| self.scopes.get_mut(si)) {
            s.earliest = now + min_interval;
            s.next_announce = if completed_pending {
                now
            } else {
                now + interval
            };
        }
        self.merge_peers(&resp.peers);
    }

    fn on_failure(
        &mut self,
        now: Instant,
        i: usize,
        event: AnnounceEvent,
        scope_index: Option<usize>,
        message: String,
    ) {
        let backoff = {
            let failures = self.trackers.get(i).map_or(0, |t| t.failures) + 1;
            self.backoff(failures)
        };
        let Some(t) = self.trackers.get_mut(i) else {
            return;
        };
        t.failures = t.failures.saturating_add(1);
        t.backoff_until = Some(now + backoff);
        t.last_error = Some(message);
        if event == AnnounceEvent::Stopped {
            return;
        }
        // BEP 12: fall through to the next tracker at once.
        if let Some(s) = scope_index.and_then(|si| self.scopes.get_mut(si)) {
            s.next_announce = s.next_announce.min(now);
        }
    }

    /// Counts every live attempt whose budget ran out by `now` as failed (see the module docs): the
    /// tracker is backed off and its scope moves on to the next tracker; the attempt stays marked in
    /// flight, so the tracker gets no new order before its result comes back.
    fn expire_attempts(&mut self, now: Instant) {
        let budget = self.config.attempt_timeout.max(Duration::from_millis(1));
        for i in 0..self.trackers.len() {
            let Some(f) = self.trackers.get_mut(i).and_then(|t| t.in_flight.as_mut()) else {
                continue;
            };
            if !f.live() || f.deadline > now {
                continue;
            }
            f.abandoned = true;
            let event = f.event;
            let scope_index = self.scopes.iter().position(|s| s.in_flight == Some(i));
            if let Some(s) = scope_index.and_then(|si| self.scopes.get_mut(si)) {
                s.in_flight = None;
            }
            let message = format!("no answer within {} s", budget.as_secs_f64());
            self.on_failure(now, i, event, scope_index, message);
        }
    }

    /// `backoff_base * 2^(failures-1)`, capped, then scaled by a random factor in [0.75, 1].
    fn backoff(&mut self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let full = self
            .config
            .backoff_base
            .saturating_mul(factor)
            .min(self.config.backoff_cap);
        let nanos = u64::try_from(full.as_nanos()).unwrap_or(u64::MAX);
        let low = nanos / 4 * 3;
        Duration::from_nanos(self.rng.random_range(low..=nanos))
    }

    /// Adds a reply's peers to the pending list. Up to the cap every new peer is kept; past it, the
    /// pending list is a uniform random sample (reservoir sampling) of everything offered since it was
    /// last drained, so a good peer late in a list of 100 000 has the same chance as the first one. A
    /// peer pushed out of the sample is forgotten, so a later reply may offer it again.
    fn merge_peers(&mut self, peers: &[SocketAddr]) {
        let cap = self.config.max_pending_peers;
        for p in peers {
            let p = SocketAddr::new(p.ip().to_canonical(), p.port());
            if p.port() == 0 || p.ip().is_unspecified() {
                continue;
            }
            if self.known_peers.len() >= self.config.max_known_peers {
                self.known_peers.clear();
            }
            if !self.known_peers.insert(p) {
                continue;
            }
            self.offered = self.offered.saturating_add(1);
            if self.pending_peers.len() < cap {
                self.pending_peers.push_back(p);
                continue;
            }
            let slot = self.rng.random_range(0..self.offered);
            if let Some(old) = usize::try_from(slot)
                .ok()
                .and_then(|i| self.pending_peers.get_mut(i))
            {
                let old = std::mem::replace(old, p);
                self.known_peers.remove(&old);
            } else {
                self.known_peers.remove(&p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(tiers: &[&[&str]]) -> Vec<Vec<String>> {
        tiers
            .iter()
            .map(|t| t.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    fn policy(tiers: &[&[&str]], config: AnnounceConfig, seed: u64) -> AnnouncePolicy {
        AnnouncePolicy::new(
            InfoHash([7; 20]),
            PeerId([b'x'; 20]),
            6881,
            0xabcd,
            &urls(tiers),
            config,
            &mut seeded(seed),
        )
    }

    const LEECH: Progress = Progress {
        uploaded: 1,
        downloaded: 2,
        left: 100,
    };
    const SEED: Progress = Progress {
        uploaded: 5,
        downloaded: 102,
        left: 0,
    };

    fn ok(interval: u64, peers: &[&str]) -> Result<AnnounceResponse, String> {
        Ok(AnnounceResponse {
            interval: Duration::from_secs(interval),
            peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
            seeders: Some(1),
            leechers: Some(2),
            ..AnnounceResponse::default()
        })
    }

    fn t(s: u64) -> Instant {
        Instant::from_secs(s)
    }

    fn tier_order(p: &AnnouncePolicy, tier: usize) -> Vec<String> {
        p.tracker_status(t(0))
            .into_iter()
            .filter(|s| s.tier == tier)
            .map(|s| s.url)
            .collect()
    }

    fn all(p: &mut AnnouncePolicy, now: Instant, prog: Progress) -> Vec<AnnounceOrder> {
        std::iter::from_fn(|| p.poll_announce(now, prog)).collect()
    }

    #[test]
    fn tiers_are_shuffled_deduplicated_and_ordered() {
        let tiers: &[&[&str]] = &[&["a", "b", "c", "d", "e", "f"], &[], &["a", "g"]];
        let orders: HashSet<Vec<String>> = (0..8)
            .map(|seed| tier_order(&policy(tiers, AnnounceConfig::default(), seed), 0))
            .collect();
        assert!(orders.len() > 1, "shuffled with the caller's rng");
        let p = policy(tiers, AnnounceConfig::default(), 1);
        assert_eq!(
            tier_order(&p, 1),
            vec!["g"],
            "duplicate a dropped, empty tier dropped"
        );
        assert_eq!(
            tier_order(&p, 0),
            tier_order(&policy(tiers, AnnounceConfig::default(), 1), 0),
            "same seed, same order"
        );
    }

    #[test]
    fn fall_through_tiers_then_promotion() {
        let mut p = policy(&[&["a1", "a2"], &["b1"]], AnnounceConfig::default(), 3);
        let tier0 = tier_order(&p, 0);
        p.start(t(0));
        assert_eq!(p.poll_timeout(), Some(t(0)));
        // First tracker of tier 0 fails: the second is tried at once, then tier 1.
        let o = all(&mut p, t(0), LEECH);
        assert_eq!(o.len(), 1, "one tracker at a time (BEP 12)");
        assert_eq!(o[0].url, tier0[0]);
        assert_eq!(o[0].params.event, AnnounceEvent::Started);
        p.handle_response(t(1), o[0].tracker, Err("timed out".into()));
        let o = all(&mut p, t(1), LEECH);
        assert_eq!(o[0].url, tier0[1]);
        p.handle_response(t(2), o[0].tracker, Err("refused".into()));
        let o = all(&mut p, t(2), LEECH);
        assert_eq!(o[0].url, "b1");
        p.handle_response(t(3), o[0].tracker, ok(1800, &[]));
        assert!(all(&mut p, t(3), LEECH).is_empty());
        assert_eq!(p.poll_timeout(), Some(t(1803)));
        // At the next interval tier 0 is tried first again; its second tracker answers and is promoted.
        let o = all(&mut p, t(1803), LEECH);
        assert_eq!(o[0].url, tier0[0]);
        p.handle_response(t(1804), o[0].tracker, Err("down".into()));
        let o = all(&mut p, t(1804), LEECH);
        assert_eq!(o[0].url, tier0[1]);
        assert_eq!(o[0].params.event, AnnounceEvent::Started);
        p.handle_response(t(1805), o[0].tracker, ok(1800, &[]));
        assert_eq!(tier_order(&p, 0), vec![tier0[1].clone(), tier0[0].clone()]);
        let o = all(&mut p, t(1805 + 1800), LEECH);
        assert_eq!(o[0].url, tier0[1], "the promoted tracker goes first");
        assert_eq!(o[0].params.event, AnnounceEvent::None);
    }

    #[test]
    fn all_tiers_mode_announces_one_per_tier_and_merges_peers() {
        let config = AnnounceConfig {
            announce_to_all_tiers: true,
            ..AnnounceConfig::default()
        };
        let mut p = policy(&[&["a"], &["b"]], config, 1);
        p.start(t(0));
        let o = all(&mut p, t(0), LEECH);
        assert_eq!(o.len(), 2);
        p.handle_response(
            t(1),
            o[0].tracker,
            ok(600, &["1.1.1.1:1", "2.2.2.2:2", "2.2.2.2:2"]),
        );
        p.handle_response(
            t(1),
            o[1].tracker,
            ok(
                600,
                &["2.2.2.2:2", "[::ffff:1.1.1.1]:1", "3.3.3.3:3", "4.4.4.4:0"],
            ),
        );
        let peers = p.take_peers();
        let expect: Vec<SocketAddr> = ["1.1.1.1:1", "2.2.2.2:2", "3.3.3.3:3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(peers, expect);
        assert!(p.take_peers().is_empty());
        p.handle_response(t(2), o[1].tracker, ok(600, &["9.9.9.9:9"]));
        assert!(p.take_peers().is_empty(), "a stale result is ignored");
    }

    #[test]
    fn params_are_honest_and_tracker_id_is_echoed() {
        let mut p = policy(&[&["http://t/announce"]], AnnounceConfig::default(), 1);
        p.start(t(0));
        let o = p.poll_announce(t(0), LEECH).unwrap();
        assert_eq!(o.params.uploaded, 1);
        assert_eq!(o.params.downloaded, 2);
        assert_eq!(o.params.left, 100);
        assert_eq!(o.params.num_want, Some(50));
        assert_eq!(o.params.key, 0xabcd);
        assert_eq!(o.params.port, 6881);
        assert_eq!(o.tracker_id, None);
        let mut resp = ok(100, &[]).unwrap();
        resp.tracker_id = Some(b"tid-1".to_vec());
        p.handle_response(t(0), o.tracker, Ok(resp));
        let o = p.poll_announce(t(100), LEECH).unwrap();
        assert_eq!(o.tracker_id, Some(b"tid-1".to_vec()));
        assert_eq!(p.handle_for_url("http://t/announce"), Some(o.tracker));
    }

    #[test]
    fn completed_is_sent_exactly_once() {
        let mut p = policy(&[&["a"]], AnnounceConfig::default(), 1);
        p.start(t(0));
        let o = p.poll_announce(t(0), LEECH).unwrap();
        p.handle_response(t(0), o.tracker, ok(1800, &[]));
        p.set_completed(t(100));
        let o = p.poll_announce(t(100), SEED).unwrap();
        assert_eq!(o.params.event, AnnounceEvent::Completed);
        assert_eq!(o.params.left, 0);
        // A failed `completed` is retried as `completed`.
        p.handle_response(t(101), o.tracker, Err("busy".into()));
        let retry_at = p.poll_timeout().unwrap();
        assert!(retry_at > t(101));
        let o = p.poll_announce(retry_at, SEED).unwrap();
        assert_eq!(o.params.event, AnnounceEvent::Completed);
        p.handle_response(retry_at, o.tracker, ok(1800, &[]));
        p.set_completed(retry_at + Duration::from_secs(1));
        assert!(p
            .poll_announce(retry_at + Duration::from_secs(1), SEED)
            .is_none());
        let mut events = Vec::new();
        for _ in 0..3 {
            let now = p.poll_timeout().unwrap();
            let o = p.poll_announce(now, SEED).unwrap();
            events.push(o.params.event);
            p.handle_response(now, o.tracker, ok(1800, &[]));
        }
        assert_eq!(events, vec![AnnounceEvent::None; 3]);
    }

    #[test]
    fn no_completed_for_a_tracker_that_only_saw_us_seeding() {
        let mut p = policy(&[&["a"]], AnnounceConfig::default(), 1);
        p.start(t(0));
        p.set_completed(t(0));
        let o = p.poll_announce(t(0), SEED).unwrap();
        assert_eq!(o.params.event, AnnounceEvent::Started);
        p.handle_response(t(0), o.tracker, ok(1800, &[]));
        assert_eq!(p.poll_timeout(), Some(t(1800)));
    }

    #[test]
    fn completion_during_inflight_started_sends_completed_after() {
        let mut p = policy(&[&["a"]], AnnounceConfig::default(), 1);
        p.start(t(0));
        let o = p.poll_announce(t(0), LEECH).unwrap();
        p.set_completed(t(1));
        assert!(
            p.poll_announce(t(1), SEED).is_none(),
            "one request per tracker at a time"
        );
        p.handle_response(t(2), o.tracker, ok(1800, &[]));
        let o = p.poll_announce(t(2), SEED).unwrap();
        assert_eq!(o.params.event, AnnounceEvent::Completed);
    }

    #[test]
    fn stopped_goes_to_trackers_that_acknowledged_started() {
        let config = AnnounceConfig {
            announce_to_all_tiers: true,
            ..AnnounceConfig::default()
        };
        let mut p = policy(&[&["a"], &["b"], &["c"]], config, 1);
        p.start(t(0));
        let o = all(&mut p, t(0), LEECH);
        let h = |u: &str| o.iter().find(|x| x.url == u).unwrap().tracker;
        p.handle_response(t(1), h("a"), ok(1800, &[]));
        p.handle_response(t(1), h("b"), Err("down".into()));
        // c is still in flight when we shut down.
        p.stop(t(2));
        assert!(!p.is_stopped());
        let stops = all(&mut p, t(2), LEECH);
        assert_eq!(stops.len(), 1);
        assert_eq!(stops[0].url, "a");
        assert_eq!(stops[0].params.event, AnnounceEvent::Stopped);
        // The only deadline left is c's attempt budget (its `started` went out at 0).
        assert_eq!(p.poll_timeout(), Some(t(60)));
        // c's `started` succeeds late: it gets a `stopped` too.
        p.handle_response(t(3), h("c"), ok(1800, &[]));
        let stops = all(&mut p, t(3), LEECH);
        assert_eq!(stops.len(), 1);
        assert_eq!(stops[0].url, "c");
        p.handle_response(t(4), stops[0].tracker, ok(1800, &[]));
        assert!(!p.is_stopped());
        p.handle_response(t(4), h("a"), Err("gone".into()));
        assert!(p.is_stopped());
        assert!(all(&mut p, t(5000), LEECH).is_empty(), "nothing after stop");
        // Resuming starts a new session: `started` again.
        p.start(t(6000));
        let o = all(&mut p, t(6000), LEECH);
        assert!(o.iter().all(|x| x.params.event == AnnounceEvent::Started));
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let run = |seed| {
            let mut p = policy(&[&["a"]], AnnounceConfig::default(), seed);
            p.start(t(0));
            let mut now = t(0);
            let mut waits = Vec::new();
            for _ in 0..12 {
                let o = p.poll_announce(now, LEECH).unwrap();
                p.handle_response(now, o.tracker, Err("nope".into()));
                assert!(
                    p.poll_announce(now, LEECH).is_none(),
                    "not retried during back-off"
                );
                let next = p.poll_timeout().unwrap();
                waits.push(next - now);
                match &p.tracker_status(now)[0].state {
                    TrackerState::BackingOff { until, message } => {
                        assert_eq!((*until, message.as_str()), (next, "nope"))
                    }
                    other => panic!("{other:?}"),
                }
                now = next;
            }
            waits
        };
        let a = run(1);
        for (n, w) in a.iter().enumerate() {
            let full = Duration::from_secs(30 << n).min(Duration::from_secs(1800));
            assert!(
                *w <= full && *w >= full * 3 / 4,
                "wait {n} = {w:?}, full {full:?}"
            );
        }
        for pair in a.windows(2).take(6) {
            assert!(pair[1] > pair[0], "grows: {a:?}");
        }
        assert!(a.iter().all(|w| *w <= Duration::from_secs(1800)));
        assert_ne!(a, run(2), "jitter depends on the rng");
    }

    #[test]
    fn early_reannounce_waits_for_min_interval() {
        let mut p = policy(&[&["a"]], AnnounceConfig::default(), 1);
        p.start(t(0));
        let o = p.poll_announce(t(0), LEECH).unwrap();
        let mut resp = ok(1800, &[]).unwrap();
        resp.min_interval = Some(Duration::from_secs(300));
        p.handle_response(t(0), o.tracker, Ok(resp));
        assert_eq!(p.poll_timeout(), Some(t(1800)));
        p.want_more_peers();
        assert!(
            p.poll_announce(t(10), LEECH).is_none(),
            "not before min interval"
        );
        assert_eq!(p.poll_timeout(), Some(t(300)));
        assert!(p.poll_announce(t(299), LEECH).is_none());
        let o = p.poll_announce(t(300), LEECH).unwrap();
        assert_eq!(o.params.event, AnnounceEvent::None);
        // A tracker asking for a tiny interval is held to the floor.
        p.handle_response(t(300), o.tracker, ok(1, &[]));
        assert_eq!(p.poll_timeout(), Some(t(360)));
    }

    #[test]
    fn huge_min_interval_is_capped_like_interval() {
        let mut p = policy(&[&["a"]], AnnounceConfig::default(), 1);
        p.start(t(0));
        let o = p.poll_announce(t(0), LEECH).unwrap();
        let mut resp = ok(1800, &[]).unwrap();
        resp.min_interval = Some(Duration::from_secs(u64::from(u32::MAX) << 20));
        p.handle_response(t(0), o.tracker, Ok(resp));
        let cap = AnnounceConfig::default().max_interval;
        assert_eq!(p.poll_timeout(), Some(Instant::ZERO + cap));
        p.want_more_peers();
        assert!(p.poll_announce(Instant::ZERO + cap, LEECH).is_some());
    }

    #[test]
    fn status_reports_state_counts_and_schedule() {
        let mut p = policy(&[&["a"]], AnnounceConfig::default(), 1);
        assert_eq!(p.tracker_status(t(0))[0].state, TrackerState::Idle);
        p.start(t(0));
        let o = p.poll_announce(t(0), LEECH).unwrap();
        assert_eq!(p.tracker_status(t(0))[0].state, TrackerState::Announcing);
        p.note_phase(o.tracker, InFlightPhase::Connecting);
        assert_eq!(p.tracker_status(t(0))[0].state, TrackerState::Connecting);
        p.handle_response(t(5), o.tracker, ok(900, &["1.2.3.4:5"]));
        let s = &p.tracker_status(t(6))[0];
        assert_eq!(s.state, TrackerState::Ok);
        assert_eq!(s.last_announce, Some(t(5)));
        assert_eq!(s.next_announce, Some(t(905)));
        assert_eq!(
            (s.seeders, s.leechers, s.peers_returned),
            (Some(1), Some(2), Some(1))
        );
        let o = p.poll_announce(t(905), LEECH).unwrap();
        p.handle_response(t(905), o.tracker, Err("boom".into()));
        let s = &p.tracker_status(t(905))[0];
        assert!(matches!(s.state, TrackerState::BackingOff { .. }));
        assert_eq!(s.failures, 1);
        let later = p.poll_timeout().unwrap();
        assert_eq!(
            p.tracker_status(later)[0].state,
            TrackerState::Error {
                message: "boom".into()
            }
        );
    }

    /// The policy and the UDP router together, against an in-memory tracker, on a virtual clock.
    #[test]
    fn policy_drives_udp_router_end_to_end() {
        use crate::tracker::udp::{
            AddressFamily, AnnounceReply, ConnectResponse, Request, Response, UdpUrl,
        };
        use crate::tracker::udp_client::{Event, UdpConfig, UdpTrackerRouter};
        use std::collections::HashMap;

        let mut p = policy(
            &[&["udp://127.0.0.1:6969/announce"], &["udp://[::1]:7000"]],
            AnnounceConfig {
                announce_to_all_tiers: true,
                ..AnnounceConfig::default()
            },
            9,
        );
        let mut router = UdpTrackerRouter::new(UdpConfig::default(), seeded(10));
        let mut pending = HashMap::new();
        let mut now = t(0);
        p.start(now);
        let mut announced = Vec::new();
        for _round in 0..3 {
            while let Some(order) = p.poll_announce(now, LEECH) {
                let url = UdpUrl::parse(&order.url).unwrap();
                let addr = url.socket_addr().unwrap();
                let id = router.announce(now, addr, order.params.clone()).unwrap();
                pending.insert(id, order.tracker);
            }
            // The tracker answers everything immediately.
            while let Some((to, bytes)) = router.poll_transmit() {
                let reply = match Request::decode(&bytes).unwrap() {
                    Request::Connect(c) => Response::Connect(ConnectResponse {
                        transaction_id: c.transaction_id,
                        connection_id: 99,
                    }),
                    Request::Announce(a) => {
                        announced.push((to, a.event));
                        Response::Announce(AnnounceReply {
                            transaction_id: a.transaction_id,
                            interval: 120,
                            leechers: 1,
                            seeders: 1,
                            peers: vec![if to.is_ipv4() {
                                "10.1.1.1:1000".parse().unwrap()
                            } else {
                                "[2001:db8::5]:1000".parse().unwrap()
                            }],
                        })
                    }
                    Request::Scrape(_) => unreachable!("no scrape sent"),
                };
                router.handle_datagram(now, to, &reply.to_bytes(AddressFamily::of(&to)));
            }
            while let Some(Event::Announce { id, result }) = router.poll_event() {
                let handle = pending.remove(&id).unwrap();
                p.handle_response(now, handle, result.map_err(|e| e.to_string()));
            }
            now = p.poll_timeout().unwrap();
        }
        assert_eq!(announced.len(), 6);
        assert!(announced[..2]
            .iter()
            .all(|(_, e)| *e == AnnounceEvent::Started));
        assert!(announced[2..]
            .iter()
            .all(|(_, e)| *e == AnnounceEvent::None));
        assert_eq!(p.take_peers().len(), 2);
        assert_eq!(now, t(360), "interval 120 s at 0, 120, 240; next at 360");
    }

    /// Finding 4 of the hostile-tracker review: a reply with 100 000 peers used to keep only the first
    /// 2 000 (`max_pending_peers`), so a good peer late in the list was never tried. The pending list is
    /// now a uniform sample: about as many peers from the second half as from the first, and peers not
    /// sampled are not remembered as known, so the next reply can offer them again.
    #[test]
    fn a_huge_peer_list_is_sampled_not_cut_to_its_prefix() {
        let mut p = policy(&[&["a"]], AnnounceConfig::default(), 5);
        p.start(t(0));
        let order = all(&mut p, t(0), LEECH);
        let list: Vec<SocketAddr> = (0..100_000u32)
            .map(|n| SocketAddr::from(((0x0a00_0000 + n).to_be_bytes(), 6881)))
            .collect();
        let index = |a: &SocketAddr| match a.ip() {
            std::net::IpAddr::V4(v4) => u32::from(v4) - 0x0a00_0000,
            std::net::IpAddr::V6(_) => unreachable!(),
        };
        let resp = AnnounceResponse {
            interval: Duration::from_secs(60),
            peers: list.clone(),
            ..AnnounceResponse::default()
        };
        p.handle_response(t(1), order[0].tracker, Ok(resp.clone()));
        let peers = p.take_peers();
        assert_eq!(peers.len(), 2_000);
        assert_eq!(peers.iter().collect::<HashSet<_>>().len(), 2_000);
        // Uniform: the expected count per half is 1 000 with a standard deviation near 22; the seeded
        // RNG makes this exact, and the bounds are wide enough for any seed.
        let late = peers.iter().filter(|a| index(a) >= 50_000).count();
        assert!(
            (850..=1150).contains(&late),
            "{late} of 2000 from the second half"
        );
        let last_tenth = peers.iter().filter(|a| index(a) >= 90_000).count();
        assert!(last_tenth >= 120, "{last_tenth} from the last tenth");
        // The same list again yields peers not handed out before.
        let next = all(&mut p, t(61), LEECH);
        p.handle_response(t(62), next[0].tracker, Ok(resp));
        let again = p.take_peers();
        assert_eq!(again.len(), 2_000);
        let first: HashSet<_> = peers.into_iter().collect();
        assert!(again.iter().all(|a| !first.contains(a)));
    }

    #[test]
    fn stray_compact_bytes_show_as_a_tracker_warning() {
        let mut p = policy(&[&["a"]], AnnounceConfig::default(), 5);
        p.start(t(0));
        let order = all(&mut p, t(0), LEECH);
        let resp = AnnounceResponse {
            interval: Duration::from_secs(60),
            peers: vec!["10.0.0.1:6881".parse().unwrap()],
            stray_bytes: 3,
            ..AnnounceResponse::default()
        };
        p.handle_response(t(1), order[0].tracker, Ok(resp));
        assert_eq!(p.take_peers().len(), 1);
        let status = p.tracker_status(t(1));
        let w = status[0].warning.clone().unwrap();
        assert!(w.contains("3 stray bytes"), "{w}");
    }

    #[test]
    fn unanswered_attempt_falls_through_after_its_budget() {
        let mut p = policy(&[&["a1", "a2"], &["b1"]], AnnounceConfig::default(), 3);
        let tier0 = tier_order(&p, 0);
        p.start(t(0));
        let first = all(&mut p, t(0), LEECH);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].url, tier0[0]);
        // Nothing at all comes back: the tier is held for the budget, not longer.
        assert_eq!(p.poll_timeout(), Some(t(60)));
        assert!(all(&mut p, t(59), LEECH).is_empty());
        let second = all(&mut p, t(60), LEECH);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].url, tier0[1]);
        assert_eq!(second[0].params.event, AnnounceEvent::Started);
        let s = &p.tracker_status(t(60))[0];
        assert_eq!(s.failures, 1);
        assert!(
            matches!(&s.state, TrackerState::BackingOff { message, .. } if message.contains("no answer within 60 s")),
            "{:?}",
            s.state
        );
        // The whole tier stays silent: the next tier gets its turn at 120 s.
        assert!(all(&mut p, t(119), LEECH).is_empty());
        let third = all(&mut p, t(120), LEECH);
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].url, "b1");
        p.handle_response(t(121), third[0].tracker, ok(1800, &["3.3.3.3:3"]));
        assert_eq!(p.poll_timeout(), Some(t(1921)));
        // The first tracker answers very late: its peers count and its failure is cleared, but the
        // schedule is b1's; a late failure from the second is not counted twice.
        p.handle_response(t(500), first[0].tracker, ok(60, &["1.1.1.1:1"]));
        p.handle_response(t(501), second[0].tracker, Err("timed out".into()));
        assert_eq!(p.poll_timeout(), Some(t(1921)));
        let peers = p.take_peers();
        assert_eq!(peers.len(), 2, "{peers:?}");
        let status = p.tracker_status(t(502));
        let of = |u: &str| status.iter().find(|s| s.url == u).unwrap().clone();
        assert_eq!(of(&tier0[0]).state, TrackerState::Ok);
        assert_eq!(of(&tier0[1]).failures, 1);
        // The late answer was a `started`: the next announce to it is a regular one.
        let next = all(&mut p, t(1921), LEECH);
        assert_eq!(next[0].url, tier0[0]);
        assert_eq!(next[0].params.event, AnnounceEvent::None);
    }

    #[test]
    fn shutdown_does_not_wait_for_an_unanswering_tracker() {
        let config = AnnounceConfig {
            announce_to_all_tiers: true,
            ..AnnounceConfig::default()
        };
        let mut p = policy(&[&["a"], &["b"]], config, 1);
        p.start(t(0));
        let o = all(&mut p, t(0), LEECH);
        for x in &o {
            p.handle_response(t(0), x.tracker, ok(1800, &[]));
        }
        p.stop(t(10));
        let stops = all(&mut p, t(10), LEECH);
        assert_eq!(stops.len(), 2);
        p.handle_response(t(11), stops[0].tracker, ok(0, &[]));
        // The other never answers its `stopped`: the policy is stopped once its budget is spent.
        assert!(!p.is_stopped());
        assert_eq!(p.poll_timeout(), Some(t(70)));
        assert!(all(&mut p, t(70), LEECH).is_empty());
        assert!(p.is_stopped());
        assert_eq!(p.poll_timeout(), None);
    }

    /// A UDP tracker that never answers, first in its tier, on a virtual clock: the second tracker of
    /// the tier is announced to after the policy's budget, not after BEP 15's two-hour schedule.
    #[test]
    fn dead_udp_tracker_does_not_hold_its_tier() {
        use crate::tracker::udp::UdpUrl;
        use crate::tracker::udp::{
            AddressFamily, AnnounceReply, ConnectResponse, Request, Response,
        };
        use crate::tracker::udp_client::{Event, UdpConfig, UdpTrackerRouter};
        use std::collections::HashMap;

        let dead = "udp://10.0.0.1:6969";
        let live = "udp://10.0.0.2:6969";
        // Find a seed whose shuffle puts the dead tracker first.
        let mut p = (0..64)
            .map(|seed| policy(&[&[dead, live]], AnnounceConfig::default(), seed))
            .find(|p| tier_order(p, 0)[0] == dead)
            .unwrap();
        let mut router = UdpTrackerRouter::new(UdpConfig::default(), seeded(4));
        let mut pending = HashMap::new();
        let mut live_announces = Vec::new();
        let mut now = t(0);
        p.start(now);
        while now < t(8000) {
            while let Some(order) = p.poll_announce(now, LEECH) {
                let addr = UdpUrl::parse(&order.url).unwrap().socket_addr().unwrap();
                let id = router.announce(now, addr, order.params.clone()).unwrap();
                pending.insert(id, order.tracker);
            }
            while let Some((to, bytes)) = router.poll_transmit() {
                if to.to_string() == live.trim_start_matches("udp://") {
                    let reply = match Request::decode(&bytes).unwrap() {
                        Request::Connect(c) => Response::Connect(ConnectResponse {
                            transaction_id: c.transaction_id,
                            connection_id: 5,
                        }),
                        Request::Announce(a) => {
                            live_announces.push(now);
                            Response::Announce(AnnounceReply {
                                transaction_id: a.transaction_id,
                                interval: 1800,
                                leechers: 1,
                                seeders: 1,
                                peers: vec!["10.9.9.9:9".parse().unwrap()],
                            })
                        }
                        Request::Scrape(_) => unreachable!("no scrape sent"),
                    };
                    router.handle_datagram(now, to, &reply.to_bytes(AddressFamily::V4));
                }
            }
            while let Some(Event::Announce { id, result }) = router.poll_event() {
                let handle = pending.remove(&id).unwrap();
                p.handle_response(now, handle, result.map_err(|e| e.to_string()));
            }
            router.handle_timeout(now);
            let next = [p.poll_timeout(), router.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            assert!(next > now, "no spin");
            now = next;
        }
        assert_eq!(live_announces.first(), Some(&t(60)), "{live_announces:?}");
        assert_eq!(p.take_peers(), vec!["10.9.9.9:9".parse().unwrap()]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        ToTimeout,
        Answer {
            pick: usize,
            ok: bool,
            interval: u64,
            min_interval: Option<u64>,
            peers: u8,
        },
        Completed,
        WantPeers,
        Stop,
        Start,
    }

    fn any_op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..4000).prop_map(Op::Advance),
            Just(Op::ToTimeout),
            Just(Op::ToTimeout),
            (
                any::<usize>(),
                any::<bool>(),
                prop_oneof![Just(0u64), 0u64..5000, Just(u64::MAX / 4)],
                proptest::option::of(prop_oneof![0u64..5000, Just(u64::MAX / 4)]),
                any::<u8>(),
            )
                .prop_map(|(pick, ok, interval, min_interval, peers)| Op::Answer {
                    pick,
                    ok,
                    interval,
                    min_interval,
                    peers,
                }),
            Just(Op::Completed),
            Just(Op::WantPeers),
            Just(Op::Stop),
            Just(Op::Start),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Any sequence of inputs: no order to a tracker that has one outstanding, `completed` at
        /// most once per tracker and session, no spin (`poll_timeout` after a drained
        /// `poll_announce(now)` is later than `now`), peer queues within their caps.
        #[test]
        fn arbitrary_inputs_keep_the_policy_sane(
            all_tiers in proptest::bool::ANY,
            seed in 0u64..1000,
            ops in proptest::collection::vec(any_op(), 0..60),
        ) {
            let config = AnnounceConfig {
                announce_to_all_tiers: all_tiers,
                max_pending_peers: 40,
                max_known_peers: 60,
                ..AnnounceConfig::default()
            };
            let mut p = policy(&[&["a", "b"], &["c"], &["d", "e", "f"]], config, seed);
            let mut now = t(0);
            let mut outstanding: Vec<(TrackerHandle, AnnounceEvent)> = Vec::new();
            let mut completed_acked: HashSet<TrackerHandle> = HashSet::new();
            let mut progress = LEECH;
            let mut peer_base = 0u32;
            for op in ops {
                match op {
                    Op::Advance(s) => now += Duration::from_secs(s),
                    Op::ToTimeout => {
                        if let Some(at) = p.poll_timeout() {
                            now = now.max(at);
                        }
                    }
                    Op::Answer { pick, ok, interval, min_interval, peers } => {
                        if !outstanding.is_empty() {
                            let (h, event) = outstanding.remove(pick % outstanding.len());
                            if ok && event == AnnounceEvent::Completed {
                                completed_acked.insert(h);
                            }
                            let result = if ok {
                                let list = (0..u32::from(peers))
                                    .map(|k| {
                                        let n = peer_base.wrapping_add(k);
                                        SocketAddr::from((n.to_be_bytes(), 6881))
                                    })
                                    .collect();
                                peer_base = peer_base.wrapping_add(u32::from(peers) / 2);
                                Ok(AnnounceResponse {
                                    interval: Duration::from_secs(interval),
                                    min_interval: min_interval.map(Duration::from_secs),
                                    peers: list,
                                    ..AnnounceResponse::default()
                                })
                            } else {
                                Err("down".to_owned())
                            };
                            p.handle_response(now, h, result);
                        }
                    }
                    Op::Completed => {
                        progress = SEED;
                        p.set_completed(now);
                    }
                    Op::WantPeers => p.want_more_peers(),
                    Op::Stop => p.stop(now),
                    Op::Start => {
                        completed_acked.clear();
                        p.start(now);
                    }
                }
                while let Some(order) = p.poll_announce(now, progress) {
                    proptest::prop_assert!(
                        outstanding.iter().all(|(h, _)| *h != order.tracker),
                        "second order to {:?} while one is outstanding",
                        order.tracker
                    );
                    if order.params.event == AnnounceEvent::Completed {
                        proptest::prop_assert!(
                            !completed_acked.contains(&order.tracker),
                            "second `completed` to {:?}",
                            order.tracker
                        );
                    }
                    outstanding.push((order.tracker, order.params.event));
                }
                if let Some(at) = p.poll_timeout() {
                    proptest::prop_assert!(at > now, "poll_timeout {:?} not after {:?}", at, now);
                }
                let peers = p.take_peers();
                proptest::prop_assert!(peers.len() <= 40);
                proptest::prop_assert!(p.known_peers.len() <= 60);
                let unique: HashSet<_> = peers.iter().collect();
                proptest::prop_assert_eq!(unique.len(), peers.len());
            }
        }
    }

    #[test]
    fn no_trackers_means_nothing_to_do() {
        let mut p = policy(&[], AnnounceConfig::default(), 1);
        p.start(t(0));
        assert!(p.poll_announce(t(0), LEECH).is_none());
        assert_eq!(p.poll_timeout(), None);
    }
}

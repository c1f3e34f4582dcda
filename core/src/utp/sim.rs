//! An in-memory network for uTP on a virtual clock: one-way links with latency, random loss, jitter
//! (which reorders), duplication and a bottleneck rate with a drop-tail queue, and a harness that runs
//! one transfer between two [`UtpSocket`]s over a pair of such links.
//!
//! Used by the unit tests and by the throughput bench; nothing here reads a clock or the OS: the same
//! seed gives the same run.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use super::conn::Counters;
use super::{CloseReason, ConnId, Event, StreamError, UtpConfig, UtpSocket};
use crate::rng::{seeded, CoreRng, RngExt};
use crate::time::Instant;

/// One direction of a simulated path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// Propagation delay.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per datagram (reorders datagrams).
    pub jitter: Duration,
    /// Datagrams lost at random, in parts per million.
    pub loss_ppm: u32,
    /// Datagrams delivered twice, in parts per million.
    pub duplicate_ppm: u32,
    /// Bottleneck rate in bytes per second (`None`: infinitely fast).
    pub rate: Option<u64>,
    /// Drop-tail: a datagram that would wait longer than this in the bottleneck queue is dropped.
    pub queue_limit: Duration,
}

impl LinkConfig {
    /// A perfect, instant link (the in-memory loopback).
    pub fn loopback() -> LinkConfig {
        LinkConfig {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss_ppm: 0,
            duplicate_ppm: 0,
            rate: None,
            queue_limit: Duration::from_secs(1),
        }
    }
}

/// What a link did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams offered to the link.
    pub sent: u64,
    /// Datagrams lost at random.
    pub lost: u64,
    /// Datagrams dropped at the full bottleneck queue.
    pub queue_drops: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Datagrams delivered (copies included).
    pub delivered: u64,
    /// Sum of the time delivered datagrams spent queued at the bottleneck, in nanoseconds.
    pub queue_delay_ns: u128,
    /// The longest such wait.
    pub max_queue_delay: Duration,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    order: u64,
    buf: Vec<u8>,
}

/// One direction of a simulated path.
#[derive(Debug)]
pub struct Link {
    cfg: LinkConfig,
    rng: CoreRng,
    queue: BinaryHeap<Reverse<InFlight>>,
    busy_until: Instant,
    order: u64,
    pool: Vec<Vec<u8>>,
    /// What the link did so far.
    pub stats: LinkStats,
}

impl Link {
    /// A link with its own seeded randomness.
    pub fn new(cfg: LinkConfig, seed: u64) -> Link {
        Link {
            cfg,
            rng: seeded(seed),
            queue: BinaryHeap::new(),
            busy_until: Instant::ZERO,
            order: 0,
            pool: Vec::new(),
            stats: LinkStats::default(),
        }
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.rng.random_range(0..1_000_000u32) < ppm
    }

    fn jitter(&mut self) -> Duration {
        let j = self.cfg.jitter.as_nanos() as u64;
        if j == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.random_range(0..=j))
        }
    }

    fn enqueue(&mut self, at: Instant, bytes: &[u8]) {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        self.order += 1;
        self.queue.push(Reverse(InFlight {
            at,
            order: self.order,
            buf,
        }));
    }

    /// Offers a datagram to the link at `now`.
    pub fn send(&mut self, now: Instant, bytes: &[u8]) {
        self.stats.sent += 1;
        let mut depart = now;
        if let Some(rate) = self.cfg.rate {
            let start = self.busy_until.max(now);
            let wait = start - now;
            if wait > self.cfg.queue_limit {
                self.stats.queue_drops += 1;
                return;
            }
            let tx = Duration::from_nanos(bytes.len() as u64 * 1_000_000_000 / rate.max(1));
            depart = start + tx;
            self.busy_until = depart;
            self.stats.queue_delay_ns += wait.as_nanos();
            self.stats.max_queue_delay = self.stats.max_queue_delay.max(wait);
        }
        if self.chance(self.cfg.loss_ppm) {
            self.stats.lost += 1;
            return;
        }
        let at = depart + self.cfg.latency + self.jitter();
        self.enqueue(at, bytes);
        if self.chance(self.cfg.duplicate_ppm) {
            self.stats.duplicated += 1;
            let at = depart + self.cfg.latency + self.jitter();
            self.enqueue(at, bytes);
        }
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(f)| f.at)
    }

    /// Hands every datagram due by `now` to `deliver`, in arrival order.
    pub fn deliver(&mut self, now: Instant, mut deliver: impl FnMut(&[u8])) {
        while self.queue.peek().is_some_and(|Reverse(f)| f.at <= now) {
            if let Some(Reverse(f)) = self.queue.pop() {
                self.stats.delivered += 1;
                deliver(&f.buf);
                if self.pool.len() < 256 {
                    self.pool.push(f.buf);
                }
            }
        }
    }
}

/// Period of the transfer pattern: not a multiple of any packet size, so a misplaced packet shows.
const PATTERN_PERIOD: usize = (1 << 20) + 7;

/// The byte at stream offset `i` of a transfer: a pattern that catches reordering and duplication.
pub fn pattern_byte(i: u64) -> u8 {
    let i = i % PATTERN_PERIOD as u64;
    (i.wrapping_mul(0x9e37_79b9) >> 13) as u8 ^ (i >> 11) as u8
}

/// The pattern for offsets `start..` as slices of a precomputed table (one period long).
struct Pattern(Vec<u8>);

impl Pattern {
    fn new() -> Pattern {
        Pattern((0..PATTERN_PERIOD as u64).map(pattern_byte).collect())
    }

    /// Up to `max` pattern bytes from stream offset `start`.
    fn slice(&self, start: u64, max: usize) -> &[u8] {
        let at = (start % PATTERN_PERIOD as u64) as usize;
        let end = (at + max).min(self.0.len());
        &self.0[at..end]
    }

    /// Whether `data` is the pattern from stream offset `start`.
    fn matches(&self, mut start: u64, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            let want = self.slice(start, data.len());
            if data[..want.len()] != *want {
                return false;
            }
            start += want.len() as u64;
            data = &data[want.len()..];
        }
        true
    }
}

/// How a simulated transfer went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReport {
    /// Bytes the receiver read.
    pub delivered: u64,
    /// Whether every byte read matched what was written, in order.
    pub exact: bool,
    /// How the sender's and the receiver's connections ended (`None`: still open at the time limit).
    pub closed: (Option<CloseReason>, Option<CloseReason>),
    /// Virtual time from connect until the receiver read the end of the stream (or the time limit).
    pub elapsed: Duration,
    /// Sender to receiver link.
    pub forward: LinkStats,
    /// Receiver to sender link.
    pub backward: LinkStats,
    /// The sender's packet counters at the end.
    pub sender: Counters,
}

impl TransferReport {
    /// Goodput in bytes per virtual second.
    pub fn throughput(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Mean time a forward datagram waited at the bottleneck.
    pub fn mean_queue_delay(&self) -> Duration {
        let n = (self.forward.sent - self.forward.queue_drops).max(1);
        Duration::from_nanos((self.forward.queue_delay_ns / u128::from(n)) as u64)
    }
}

/// Sends `total` bytes from one socket to another over `forward` (and acks over `backward`), both
/// sides closing gracefully, and reports what happened. Stops at `time_limit` of virtual time.
pub fn run_transfer(
    cfg: &UtpConfig,
    forward: LinkConfig,
    backward: LinkConfig,
    total: u64,
    seed: u64,
    time_limit: Duration,
) -> TransferReport {
    let a_addr: SocketAddr = ([10, 0, 0, 1], 6881).into();
    let b_addr: SocketAddr = ([10, 0, 0, 2], 6881).into();
    let mut a = UtpSocket::new(cfg.clone(), seeded(seed));
    let mut b = UtpSocket::new(cfg.clone(), seeded(seed ^ 0x5eed));
    let mut ab = Link::new(forward, seed.wrapping_add(1));
    let mut ba = Link::new(backward, seed.wrapping_add(2));
    let mut now = Instant::ZERO;
    let end = now + time_limit;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = vec![0u8; 64 * 1024];
    let pattern = Pattern::new();
    let Ok(a_id) = a.connect(now, b_addr) else {
        unreachable!("a fresh socket has room for one connection")
    };
    let mut b_id: Option<ConnId> = None;
    let (mut written, mut read, mut exact) = (0u64, 0u64, true);
    let mut a_closed = None;
    let mut b_closed = None;
    let mut a_shut = false;
    let mut b_shut = false;
    let mut eof_at = None;
    loop {
        // Applications.
        while written < total {
            let n = ((total - written) as usize).min(chunk.len());
            match a.write(a_id, pattern.slice(written, n)) {
                Ok(0) | Err(_) => break,
                Ok(w) => written += w as u64,
            }
        }
        if written == total && !a_shut {
            a.close(a_id);
            a_shut = true;
        }
        while let Some(e) = a.poll_event() {
            if let Event::Closed(_, r) = e {
                a_closed = Some(r);
            }
        }
        while let Some(e) = b.poll_event() {
            match e {
                Event::Accepted(id) => b_id = Some(id),
                Event::Closed(_, r) => b_closed = Some(r),
                _ => {}
            }
        }
        if let Some(id) = b_id {
            loop {
                match b.read(id, &mut chunk) {
                    Ok(0) => {
                        eof_at.get_or_insert(now);
                        if !b_shut {
                            b.close(id);
                            b_shut = true;
                        }
                        break;
                    }
                    Ok(n) => {
                        exact &= pattern.matches(read, &chunk[..n]);
                        read += n as u64;
                    }
                    Err(StreamError::WouldBlock) | Err(_) => break,
                }
            }
        }
        if (a_closed.is_some() && b_closed.is_some()) || now >= end {
            break;
        }
        // Network.
        while let Some(_to) = a.poll_transmit(now, &mut buf) {
            ab.send(now, &buf);
        }
        while let Some(_to) = b.poll_transmit(now, &mut buf) {
            ba.send(now, &buf);
        }
        let next = [
            a.poll_timeout(),
            b.poll_timeout(),
            ab.next_arrival(),
            ba.next_arrival(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            break;
        };
        now = next.max(now).min(end);
        ab.deliver(now, |d| {
            b.handle_datagram(now, a_addr, d);
        });
        ba.deliver(now, |d| {
            a.handle_datagram(now, b_addr, d);
        });
        if a.poll_timeout().is_some_and(|t| t <= now) {
            a.handle_timeout(now);
        }
        if b.poll_timeout().is_some_and(|t| t <= now) {
            b.handle_timeout(now);
        }
    }
    TransferReport {
        delivered: read,
        exact: exact && read == total,
        closed: (a_closed, b_closed),
        elapsed: eof_at.unwrap_or(now) - Instant::ZERO,
        forward: ab.stats,
        backward: ba.stats,
        sender: a.conn_stats(a_id).map(|s| s.counters).unwrap_or_default(),
    }
}

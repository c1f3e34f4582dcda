//! A deterministic in-memory network of DHT nodes: datagrams with latency and loss, a virtual clock and
//! one seeded generator, so a run of thousands of nodes is reproducible to the packet. Built for this
//! module's tests; the `testkit` feature exposes it so the swarm simulator can reuse it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::Duration;

use crate::rng::{seeded, CoreRng, RngExt};
use crate::time::Instant;

use super::id::NodeId;
use super::node::{Dht, DhtConfig, DhtEvent};

/// How the simulated network behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed for everything random: ids, latencies, losses, node seeds.
    pub seed: u64,
    /// One-way delay, drawn uniformly per datagram between these bounds.
    pub latency: (Duration, Duration),
    /// Probability that a datagram is lost.
    pub loss: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            latency: (Duration::from_millis(10), Duration::from_millis(150)),
            loss: 0.0,
        }
    }
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Its address on the virtual network.
    pub addr: SocketAddr,
    /// The node.
    pub dht: Dht,
    /// Whether it is up; datagrams to a node that is down are lost.
    pub alive: bool,
    scheduled: Option<Instant>,
}

/// A datagram in flight.
type Flight = Reverse<(Instant, u64, usize, SocketAddr, Vec<u8>)>;

/// The network and its clock.
#[derive(Debug)]
pub struct SimNet {
    config: SimConfig,
    now: Instant,
    rng: CoreRng,
    nodes: Vec<SimNode>,
    by_addr: BTreeMap<SocketAddr, usize>,
    flights: BinaryHeap<Flight>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    seq: u64,
    /// Every event any node reported, with when and which node.
    pub events: Vec<(Instant, usize, DhtEvent)>,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Datagrams lost (loss draw, unknown address, or node down).
    pub lost: u64,
}

impl SimNet {
    /// An empty network at time zero.
    pub fn new(config: SimConfig) -> SimNet {
        SimNet {
            rng: seeded(config.seed),
            config,
            now: Instant::ZERO,
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            flights: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            events: Vec::new(),
            delivered: 0,
            lost: 0,
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// One node.
    pub fn node_mut(&mut self, i: usize) -> &mut SimNode {
        &mut self.nodes[i]
    }

    /// The address of the `i`-th node ever added (127.x.y.z:6881: unique, and never a real socket).
    pub fn addr_of_index(i: usize) -> SocketAddr {
        let i = i as u32 + 1;
        SocketAddr::from(([127, (i >> 16) as u8 + 1, (i >> 8) as u8, i as u8], 6881))
    }

    /// Adds a node with a random id and starts its bootstrap from `bootstrap`; returns its index.
    pub fn add_node(&mut self, config: DhtConfig, bootstrap: &[SocketAddr]) -> usize {
        let i = self.nodes.len();
        let addr = Self::addr_of_index(i);
        let seed: u64 = self.rng.random();
        let id = NodeId::random(&mut self.rng);
        let mut dht = Dht::with_id(config, id, self.now, seeded(seed));
        if !bootstrap.is_empty() {
            dht.bootstrap(self.now, bootstrap);
        }
        self.nodes.push(SimNode {
            addr,
            dht,
            alive: true,
            scheduled: None,
        });
        self.by_addr.insert(addr, i);
        self.flush(i);
        i
    }

    /// Takes a node down for good (its datagrams and timers stop).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].alive = false;
    }

    /// Runs `f` on a live node at the current time, then sends what it produced.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Dht, Instant) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.nodes[i].dht, now);
        self.flush(i);
        r
    }

    /// Puts a datagram on the wire from any address (an attacker's, or a spoofed one) to node `to`,
    /// arriving at `at` (never earlier than now); not subject to loss.
    pub fn inject(&mut self, at: Instant, to: usize, from: SocketAddr, bytes: Vec<u8>) {
        self.seq += 1;
        self.flights
            .push(Reverse((at.max(self.now), self.seq, to, from, bytes)));
    }

    fn flush(&mut self, i: usize) {
        let from = self.nodes[i].addr;
        while let Some((to, bytes)) = self.nodes[i].dht.poll_transmit() {
            let lost = self.config.loss > 0.0 && self.rng.random::<f64>() < self.config.loss;
            match self.by_addr.get(&to) {
                Some(&j) if !lost => {
                    let (lo, hi) = self.config.latency;
                    let span = hi.saturating_sub(lo).as_micros() as u64;
                    let delay = lo + Duration::from_micros(self.rng.random_range(0..=span));
                    self.seq += 1;
                    self.flights
                        .push(Reverse((self.now + delay, self.seq, j, from, bytes)));
                }
                _ => self.lost += 1,
            }
        }
        while let Some(e) = self.nodes[i].dht.poll_event() {
            self.events.push((self.now, i, e));
        }
        let t = self.nodes[i].dht.poll_timeout();
        if t != self.nodes[i].scheduled {
            self.nodes[i].scheduled = t;
            if let Some(t) = t {
                self.timers.push(Reverse((t, i)));
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let f = self.flights.peek().map(|Reverse(f)| f.0);
        let t = self.timers.peek().map(|Reverse(t)| t.0);
        match (f, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles the next datagram or timer; false when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(next) = self.next_time() else {
            return false;
        };
        self.now = self.now.max(next);
        let flight_first = self.flights.peek().is_some_and(|Reverse(f)| f.0 == next);
        if flight_first {
            let Some(Reverse((_, _, to, from, bytes))) = self.flights.pop() else {
                return false;
            };
            if !self.nodes[to].alive {
                self.lost += 1;
                return true;
            }
            self.delivered += 1;
            let now = self.now;
            self.nodes[to].dht.handle_datagram(now, from, &bytes);
            self.flush(to);
        } else if let Some(Reverse((t, i))) = self.timers.pop() {
            if self.nodes[i].scheduled != Some(t) || !self.nodes[i].alive {
                return true;
            }
            self.nodes[i].scheduled = None;
            let now = self.now;
            self.nodes[i].dht.handle_timeout(now);
            self.flush(i);
        }
        true
    }

    /// Runs until the virtual clock reaches `t`.
    pub fn run_until(&mut self, t: Instant) {
        while self.next_time().is_some_and(|n| n <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }

    /// Runs until `done` holds (checked after every step) or the clock passes `limit`; returns whether
    /// `done` held.
    pub fn run_until_cond(
        &mut self,
        limit: Instant,
        mut done: impl FnMut(&SimNet) -> bool,
    ) -> bool {
        while !done(self) {
            match self.next_time() {
                Some(n) if n <= limit => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(limit);
                    return done(self);
                }
            }
        }
        true
    }

    /// A random index among the live nodes.
    pub fn random_live(&mut self) -> usize {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].alive)
            .collect();
        live[self.rng.random_range(0..live.len())]
    }

    /// The network's generator, for a test's own random choices (keeps the run reproducible).
    pub fn rng(&mut self) -> &mut CoreRng {
        &mut self.rng
    }
}

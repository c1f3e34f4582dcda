//! A lossy UDP relay for the uTP tests: the user-space stand-in for `netem` (this kernel has none).
//!
//! A [`UdpRelay`] listens on a loopback port and forwards every datagram it receives there to one
//! target address, and the target's answers back, with a configurable one-way delay, loss,
//! reordering and duplication ([`RelayConfig`]).
//!
//! How the two sides learn each other's address: the dialling peer is told to connect to the
//! relay's [`UdpRelay::addr`] (e.g. libtorrent's `--connect`, Hyperblow's `AddTorrentRequest::peers`).
//! For each new source address that sends to the listening socket, the relay opens one upstream
//! socket of its own (bound to an ephemeral loopback port) and sends that client's datagrams to the
//! target from it; whatever the target sends back to that upstream socket goes to that client,
//! from the listening socket. So the target sees one distinct peer address per client (the
//! upstream socket's), and answering that address reaches the client through the relay. Peers
//! learn each other's listen ports from their extension handshakes and may dial those at the IP
//! they know the other by, the relay's: [`UdpRelay::start_on`] an IP nobody else listens on (e.g.
//! 127.0.0.3) makes such dials find nobody, so every byte takes the relay; a test that wants both
//! directions of dial through a lossy link uses one relay per direction. [`RelayStats`] counts what went through, so a test can check that the payload did.
//!
//! Loss, reordering and duplication draw from a seeded generator, one per flow (client and
//! direction), so the n-th datagram of a flow meets the same fate on every run with the same seed.
//! Delayed datagrams wait in one bounded queue (a datagram that finds it full is dropped and
//! counted, like a router's tail drop). Threads: one receiving on the listening socket, one per
//! upstream socket, and one that sends each datagram when it is due; dropping the relay stops
//! and joins them all.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The largest datagram the relay forwards (bigger ones are truncated by the kernel and counted as
/// received, then forwarded truncated: uTP never sends one that big).
const MAX_DATAGRAM: usize = 65_536;

/// How often blocked receivers wake up to check whether the relay is stopping.
const POLL: Duration = Duration::from_millis(25);

/// How a [`UdpRelay`] treats the datagrams it forwards (each direction alike).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Probability that a datagram is dropped (0.0 ..= 1.0).
    pub loss: f64,
    /// Probability that a datagram is held back by [`RelayConfig::reorder_delay`] more, so that
    /// datagrams sent after it overtake it.
    pub reorder: f64,
    /// The extra delay of a reordered datagram.
    pub reorder_delay: Duration,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Datagrams waiting in the delay queue at most; more are dropped (tail drop).
    pub queue_cap: usize,
    /// Distinct clients (source addresses) served at most; datagrams from more are dropped.
    pub max_clients: usize,
    /// Seed of the loss/reorder/duplicate draws.
    pub seed: u64,
}

impl Default for RelayConfig {
    /// A faithful relay: no delay, no loss, no reordering, no duplicates.
    fn default() -> Self {
        RelayConfig {
            delay: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            duplicate: 0.0,
            queue_cap: 8192,
            max_clients: 16,
            seed: 1,
        }
    }
}

impl RelayConfig {
    /// The link of issue 16's relay tests: `delay` each way and `loss` (e.g. 20 ms, 1 %).
    pub fn lossy(delay: Duration, loss: f64, seed: u64) -> Self {
        RelayConfig {
            delay,
            loss,
            seed,
            ..RelayConfig::default()
        }
    }
}

/// What went through one direction of a relay.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Bytes received.
    pub received_bytes: AtomicU64,
    /// Datagrams sent on (duplicates included).
    pub forwarded: AtomicU64,
    /// Bytes sent on (duplicates included).
    pub forwarded_bytes: AtomicU64,
    /// Datagrams dropped by the loss draw.
    pub lost: AtomicU64,
    /// Datagrams dropped because the delay queue was full (or there were too many clients).
    pub overflow: AtomicU64,
    /// Datagrams held back to be overtaken.
    pub reordered: AtomicU64,
    /// Extra copies queued.
    pub duplicated: AtomicU64,
}

/// A plain-number copy of [`DirectionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionCounts {
    /// Datagrams received.
    pub received: u64,
    /// Bytes received.
    pub received_bytes: u64,
    /// Datagrams sent on (duplicates included).
    pub forwarded: u64,
    /// Bytes sent on (duplicates included).
    pub forwarded_bytes: u64,
    /// Dropped by the loss draw.
    pub lost: u64,
    /// Dropped because the queue was full or there were too many clients.
    pub overflow: u64,
    /// Held back to be overtaken.
    pub reordered: u64,
    /// Extra copies queued.
    pub duplicated: u64,
}

impl DirectionStats {
    fn snapshot(&self) -> DirectionCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirectionCounts {
            // First, and with Acquire: the other counts of the datagrams it counts are in.
            received: self.received.load(Ordering::Acquire),
            received_bytes: get(&self.received_bytes),
            forwarded: get(&self.forwarded),
            forwarded_bytes: get(&self.forwarded_bytes),
            lost: get(&self.lost),
            overflow: get(&self.overflow),
            reordered: get(&self.reordered),
            duplicated: get(&self.duplicated),
        }
    }
}

/// Counters of a relay, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client (dialler) to target.
    pub to_target: DirectionCounts,
    /// Target to client.
    pub to_client: DirectionCounts,
    /// Distinct clients seen.
    pub clients: u64,
}

/// A small seeded generator (SplitMix64): reproducible draws without a dependency.
#[derive(Debug, Clone)]
struct Draws(u64);

impl Draws {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `true` with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a float in [0, 1).
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// One datagram waiting for its time.
#[derive(Debug)]
struct Pending {
    due: Instant,
    /// Tie-breaker: datagrams due at the same instant leave in arrival order.
    seq: u64,
    socket: Arc<UdpSocket>,
    dest: SocketAddr,
    data: Vec<u8>,
    stats: Arc<DirectionStats>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The delay queue shared by the receivers and the sender.
#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Pending>>,
    next_seq: u64,
}

#[derive(Debug)]
struct Shared {
    config: RelayConfig,
    target: SocketAddr,
    stop: AtomicBool,
    queue: Mutex<Queue>,
    wake: Condvar,
    to_target: Arc<DirectionStats>,
    to_client: Arc<DirectionStats>,
    clients: AtomicU64,
}

impl Shared {
    /// Applies the loss/reorder/duplicate draws to one received datagram and queues it.
    fn admit(
        &self,
        draws: &mut Draws,
        stats: &Arc<DirectionStats>,
        socket: &Arc<UdpSocket>,
        dest: SocketAddr,
        data: &[u8],
    ) {
        // `received` is counted last, once this datagram's fate is in the other counters: a reader
        // that sees `received` reach N knows the lost, overflow, reordered and duplicated counts
        // of those N too (tests wait on `received`, then read the rest).
        let count_received = || {
            stats
                .received_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            stats.received.fetch_add(1, Ordering::Release);
        };
        // Draw all three every time, so one fate does not shift the draws of the others.
        let lost = draws.chance(self.config.loss);
        let reordered = draws.chance(self.config.reorder);
        let duplicated = draws.chance(self.config.duplicate);
        if lost {
            stats.lost.fetch_add(1, Ordering::Relaxed);
            count_received();
            return;
        }
        let mut due = Instant::now() + self.config.delay;
        if reordered {
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            due += self.config.reorder_delay;
        }
        let copies = if duplicated { 2 } else { 1 };
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for copy in 0..copies {
            if queue.heap.len() >= self.config.queue_cap {
                stats.overflow.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if copy == 1 {
                stats.duplicated.fetch_add(1, Ordering::Relaxed);
            }
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.heap.push(Reverse(Pending {
                due,
                seq,
                socket: Arc::clone(socket),
                dest,
                data: data.to_vec(),
                stats: Arc::clone(stats),
            }));
        }
        drop(queue);
        count_received();
        self.wake.notify_one();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running relay; see the module docs. Dropping it stops its threads.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl UdpRelay {
    /// Listens on `127.0.0.1` (`::1` for an IPv6 target; an ephemeral port) and relays to `target`
    /// as `config` says.
    pub fn start(target: SocketAddr, config: RelayConfig) -> io::Result<UdpRelay> {
        let listen: SocketAddr = if target.is_ipv6() {
            "[::1]:0".parse().expect("an IPv6 literal")
        } else {
            "127.0.0.1:0".parse().expect("an IPv4 literal")
        };
        UdpRelay::start_on(listen, target, config)
    }

    /// Listens on `listen` and relays to `target`; the upstream sockets bind the same IP. An IP
    /// that no peer listens on (e.g. 127.0.0.3) keeps peers from bypassing the relay: a peer that
    /// learns the other's listen port from a handshake and dials it at the IP it knows that peer
    /// by (the relay's) finds nobody there.
    pub fn start_on(
        listen: SocketAddr,
        target: SocketAddr,
        config: RelayConfig,
    ) -> io::Result<UdpRelay> {
        let front = Arc::new(UdpSocket::bind(listen)?);
        front.set_read_timeout(Some(POLL))?;
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            target,
            stop: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            to_target: Arc::default(),
            to_client: Arc::default(),
            clients: AtomicU64::new(0),
        });
        let threads = Arc::new(Mutex::new(Vec::new()));
        let sender = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("relay-send".into())
                .spawn(move || send_loop(&shared))?
        };
        let receiver = {
            let shared = Arc::clone(&shared);
            let threads = Arc::clone(&threads);
            std::thread::Builder::new()
                .name("relay-front".into())
                .spawn(move || front_loop(&shared, &front, &threads))?
        };
        threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([sender, receiver]);
        Ok(UdpRelay {
            addr,
            shared,
            threads,
        })
    }

    /// The address peers dial to reach the target through the relay.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the relay forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            to_target: self.shared.to_target.snapshot(),
            to_client: self.shared.to_client.snapshot(),
            clients: self.shared.clients.load(Ordering::Relaxed),
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        // The front thread adds upstream threads until it sees `stop`: join until none are left.
        loop {
            let next = self.threads.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                Some(handle) => {
                    let _ = handle.join();
                }
                None => break,
            }
        }
    }
}

/// Receives from clients on the listening socket; opens one upstream socket (and thread) per client.
fn front_loop(
    shared: &Arc<Shared>,
    front: &Arc<UdpSocket>,
    threads: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let mut upstream: HashMap<SocketAddr, (Arc<UdpSocket>, Draws)> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Upstream sockets on the listening IP: the target sees the relay at one IP only.
    let bind_ip = SocketAddr::new(front.local_addr().map_or(shared.target.ip(), |a| a.ip()), 0);
    while !shared.stopping() {
        let (n, from) = match front.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if is_timeout(&e) => continue,
            // e.g. ECONNREFUSED from an earlier send to a client that has gone: keep relaying.
            Err(_) => continue,
        };
        if !upstream.contains_key(&from) {
            if upstream.len() >= shared.config.max_clients {
                shared.to_target.overflow.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Ok(socket) = UdpSocket::bind(bind_ip) else {
                shared.to_target.overflow.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if socket.set_read_timeout(Some(POLL)).is_err() {
                continue;
            }
            let socket = Arc::new(socket);
            let index = upstream.len() as u64;
            let back = {
                let shared = Arc::clone(shared);
                let socket = Arc::clone(&socket);
                let front = Arc::clone(front);
                let draws = Draws(shared.config.seed ^ (2 * index + 1).wrapping_mul(0xA24B_AED4));
                std::thread::Builder::new()
                    .name("relay-back".into())
                    .spawn(move || back_loop(&shared, &socket, &front, from, draws))
            };
            let Ok(back) = back else {
                continue;
            };
            threads.lock().unwrap_or_else(|e| e.into_inner()).push(back);
            shared.clients.fetch_add(1, Ordering::Relaxed);
            let draws = Draws(shared.config.seed ^ (2 * index).wrapping_mul(0xA24B_AED4));
            upstream.insert(from, (socket, draws));
        }
        let Some((socket, draws)) = upstream.get_mut(&from) else {
            continue;
        };
        shared.admit(draws, &shared.to_target, socket, shared.target, &buf[..n]);
    }
}

/// Receives the target's answers on one client's upstream socket and queues them for that client.
fn back_loop(
    shared: &Arc<Shared>,
    socket: &Arc<UdpSocket>,
    front: &Arc<UdpSocket>,
    client: SocketAddr,
    mut draws: Draws,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stopping() {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => continue,
        };
        if from != shared.target {
            // Only the target's answers are relayed back; anything else is noise.
            continue;
        }
        shared.admit(&mut draws, &shared.to_client, front, client, &buf[..n]);
    }
}

/// Sends each queued datagram when it is due.
fn send_loop(shared: &Shared) {
    let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if shared.stopping() {
            return;
        }
        let now = Instant::now();
        match queue.heap.peek() {
            Some(Reverse(first)) if first.due <= now => {
                let Some(Reverse(item)) = queue.heap.pop() else {
                    continue;
                };
                // Send without holding the lock, so the receivers keep queueing meanwhile.
                drop(queue);
                // Counted before the send (and taken back if it fails): the destination may read
                // the datagram before this thread runs again, and a test that then reads
                // `forwarded` must find it counted.
                let len = item.data.len() as u64;
                item.stats.forwarded_bytes.fetch_add(len, Ordering::Relaxed);
                item.stats.forwarded.fetch_add(1, Ordering::Release);
                if item.socket.send_to(&item.data, item.dest).is_err() {
                    item.stats.forwarded.fetch_sub(1, Ordering::Relaxed);
                    item.stats.forwarded_bytes.fetch_sub(len, Ordering::Relaxed);
                }
                queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            }
            Some(Reverse(first)) => {
                let wait = first.due - now;
                queue = shared
                    .wake
                    .wait_timeout(queue, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            None => {
                queue = shared
                    .wake
                    .wait_timeout(queue, POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client socket and a target socket on loopback, with read timeouts so a test never hangs.
    fn pair() -> (UdpSocket, UdpSocket) {
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        let target = UdpSocket::bind("127.0.0.1:0").expect("bind target");
        for s in [&client, &target] {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .expect("read timeout");
        }
        (client, target)
    }

    /// How long [`drain`] waits for each datagram: only a bound for a loaded machine.
    const ARRIVAL: Duration = Duration::from_secs(10);

    /// Receives until `want` datagrams arrived, or none came for [`ARRIVAL`].
    fn drain(socket: &UdpSocket, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        socket
            .set_read_timeout(Some(ARRIVAL))
            .expect("read timeout");
        let got = receive(socket, want);
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("read timeout");
        got
    }

    /// Receives until `want` datagrams arrived or the socket stays quiet for its read timeout.
    fn receive(socket: &UdpSocket, want: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < want {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => got.push((buf[..n].to_vec(), from)),
                Err(_) => break,
            }
        }
        got
    }

    fn numbered(i: u32) -> [u8; 8] {
        let mut d = [0u8; 8];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d[4..].copy_from_slice(&(!i).to_be_bytes());
        d
    }

    fn number(d: &[u8]) -> u32 {
        u32::from_be_bytes(d[..4].try_into().expect("4 bytes"))
    }

    /// Sends `n` numbered datagrams through `relay` to `target` in small batches, each once the
    /// relay has taken the previous one (so no kernel buffer overflows however slow the machine),
    /// collecting the arrivals meanwhile; then waits until everything the relay queued has left and
    /// returns the numbers in arrival order.
    fn pump(client: &UdpSocket, relay: &UdpRelay, target: &UdpSocket, n: u32) -> Vec<u32> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let mut collect = |got: &mut Vec<u32>| {
            target
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            while let Ok((len, _)) = target.recv_from(&mut buf) {
                got.push(number(&buf[..len]));
            }
        };
        let bound = Instant::now() + Duration::from_secs(30);
        let mut sent = 0;
        while sent < n {
            let end = (sent + 50).min(n);
            for i in sent..end {
                client.send_to(&numbered(i), relay.addr()).expect("send");
            }
            sent = end;
            while relay.stats().to_target.received < u64::from(sent) {
                assert!(Instant::now() < bound, "the relay stopped taking datagrams");
                collect(&mut got);
            }
            collect(&mut got);
        }
        let expect = |s: RelayStats| {
            s.to_target.received - s.to_target.lost - s.to_target.overflow + s.to_target.duplicated
        };
        while (got.len() as u64) < expect(relay.stats()) {
            assert!(
                Instant::now() < bound,
                "only {} of {} datagrams arrived: {:?}",
                got.len(),
                expect(relay.stats()),
                relay.stats()
            );
            collect(&mut got);
        }
        got
    }

    #[test]
    fn forwards_both_ways_in_order_and_counts() {
        let (client, target) = pair();
        let relay = UdpRelay::start(target.local_addr().unwrap(), RelayConfig::default())
            .expect("start relay");
        let got = pump(&client, &relay, &target, 500);
        assert_eq!(got, (0..500).collect::<Vec<_>>(), "all, in order");
        // The target sees the relay's upstream socket, not the client, and not the listening port.
        client.send_to(b"where from", relay.addr()).unwrap();
        let (_, upstream) = drain(&target, 1)[0];
        assert_ne!(upstream, client.local_addr().unwrap());
        assert_ne!(upstream, relay.addr());
        // Answers to the upstream address reach the client, from the relay's listening address.
        for i in 0..100 {
            target.send_to(&numbered(i), upstream).expect("answer");
        }
        let back = drain(&client, 100);
        assert_eq!(back.len(), 100);
        assert!(back.iter().all(|(_, from)| *from == relay.addr()));
        let order: Vec<u32> = back.iter().map(|(d, _)| number(d)).collect();
        assert_eq!(order, (0..100).collect::<Vec<_>>());
        let stats = relay.stats();
        assert_eq!(stats.clients, 1);
        assert_eq!(stats.to_target.received, 501);
        assert_eq!(stats.to_target.forwarded, 501);
        assert_eq!(stats.to_target.forwarded_bytes, 500 * 8 + 10);
        assert_eq!(stats.to_client.forwarded, 100);
        assert_eq!(stats.to_target.lost + stats.to_target.overflow, 0);
    }

    #[test]
    fn one_upstream_socket_per_client() {
        let (a, target) = pair();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let relay = UdpRelay::start(target.local_addr().unwrap(), RelayConfig::default()).unwrap();
        a.send_to(b"from a", relay.addr()).unwrap();
        let from_a = drain(&target, 1)[0].1;
        b.send_to(b"from b", relay.addr()).unwrap();
        let from_b = drain(&target, 1)[0].1;
        assert_ne!(from_a, from_b, "each client has its own upstream address");
        target.send_to(b"to b", from_b).unwrap();
        target.send_to(b"to a", from_a).unwrap();
        assert_eq!(drain(&a, 1)[0].0, b"to a");
        assert_eq!(drain(&b, 1)[0].0, b"to b");
        assert_eq!(relay.stats().clients, 2);
    }

    #[test]
    fn delay_is_a_lower_bound() {
        let (client, target) = pair();
        let delay = Duration::from_millis(30);
        let relay = UdpRelay::start(
            target.local_addr().unwrap(),
            RelayConfig::lossy(delay, 0.0, 7),
        )
        .unwrap();
        for i in 0..5 {
            let sent = Instant::now();
            client.send_to(&numbered(i), relay.addr()).unwrap();
            let got = drain(&target, 1);
            assert_eq!(got.len(), 1);
            assert!(sent.elapsed() >= delay, "a datagram never arrives early");
        }
    }

    /// The loss draws of a flow depend only on the seed: the same datagrams are lost on every run,
    /// and the rate is near the configured one.
    #[test]
    fn seeded_loss_is_reproducible_and_near_the_rate() {
        let run = |seed: u64| -> Vec<u32> {
            let (client, target) = pair();
            let relay = UdpRelay::start(
                target.local_addr().unwrap(),
                RelayConfig::lossy(Duration::ZERO, 0.05, seed),
            )
            .unwrap();
            let got = pump(&client, &relay, &target, 4000);
            let stats = relay.stats();
            assert_eq!(stats.to_target.overflow, 0);
            assert_eq!(got.len() as u64, 4000 - stats.to_target.lost);
            got
        };
        let first = run(42);
        let lost = 4000 - first.len();
        // 5 % of 4000 is 200; the binomial's standard deviation is about 14.
        assert!((140..=260).contains(&lost), "lost {lost} of 4000 at 5 %");
        assert_eq!(first, run(42), "the same seed loses the same datagrams");
        assert_ne!(first, run(43), "another seed loses others");
        assert!(first.windows(2).all(|w| w[0] < w[1]), "no reordering asked");
    }

    #[test]
    fn reorders_and_duplicates() {
        let (client, target) = pair();
        let config = RelayConfig {
            reorder: 0.1,
            reorder_delay: Duration::from_millis(20),
            duplicate: 0.05,
            seed: 9,
            ..RelayConfig::default()
        };
        let relay = UdpRelay::start(target.local_addr().unwrap(), config).unwrap();
        let got = pump(&client, &relay, &target, 1000);
        let stats = relay.stats();
        assert_eq!(got.len() as u64, 1000 + stats.to_target.duplicated);
        assert!((20..90).contains(&stats.to_target.duplicated), "{stats:?}");
        assert!((60..150).contains(&stats.to_target.reordered), "{stats:?}");
        let inversions = got.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(inversions > 0, "some datagrams were overtaken");
        let mut unique = got.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique, (0..1000).collect::<Vec<_>>(), "nothing lost");
    }

    #[test]
    fn the_queue_is_bounded() {
        let (client, target) = pair();
        // A delay far longer than sending 120 datagrams takes, so they all wait at once.
        target
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let config = RelayConfig {
            delay: Duration::from_secs(3),
            queue_cap: 40,
            ..RelayConfig::default()
        };
        let relay = UdpRelay::start(target.local_addr().unwrap(), config).unwrap();
        for i in 0..120 {
            client.send_to(&numbered(i), relay.addr()).unwrap();
        }
        let start = Instant::now();
        while relay.stats().to_target.received < 120 && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let stats = relay.stats();
        assert_eq!(stats.to_target.received, 120);
        let got = drain(&target, 120 - stats.to_target.overflow as usize);
        // Within one delay, at most `queue_cap` wait; the rest were tail-dropped.
        assert_eq!(got.len() as u64, relay.stats().to_target.forwarded);
        assert_eq!(got.len(), 40, "{stats:?}");
        assert_eq!(stats.to_target.overflow, 80);
    }

    #[test]
    fn drop_stops_the_threads() {
        let (client, target) = pair();
        let relay = UdpRelay::start(target.local_addr().unwrap(), RelayConfig::default()).unwrap();
        let addr = relay.addr();
        client.send_to(b"x", addr).unwrap();
        assert_eq!(drain(&target, 1).len(), 1);
        drop(relay);
        // The listening port is closed: nothing is relayed any more (within `pair`'s 500 ms).
        let _ = client.send_to(b"y", addr);
        assert!(receive(&target, 1).is_empty());
    }
}

//! The socket-level demultiplexer: every uTP connection that shares one UDP socket.
//!
//! Incoming datagrams are routed by (source address, connection id). A SYN for no known connection
//! creates an incoming one, within two caps: [`UtpConfig::max_connections`] in total and
//! [`UtpConfig::max_half_open`] SYNs whose initiator has not yet acknowledged our answer (a spoofed
//! source never does, and such entries expire after [`UtpConfig::half_open_timeout`]); SYNs past the
//! caps are dropped. A packet for no known connection costs a parse and a hash lookup; it is answered
//! with a RESET at most [`UtpConfig::reset_rate`] times per second (token bucket), never in answer to a
//! RESET. So a flood of bogus packets costs bounded memory and bounded work per datagram.
//!
//! Timers live in one table ordered by deadline; [`UtpSocket::poll_timeout`] is its first entry.
//! Connections with something to send wait in a round-robin queue that [`UtpSocket::poll_transmit`]
//! drains one datagram at a time into the caller's buffer, so sending allocates nothing once warm.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::conn::{ev, Conn, Counters, State};
use super::packet::{write_header, Header, Packet, PacketType};
use super::{CloseReason, ConnectError, StreamError, UtpConfig};
use crate::rng::{CoreRng, RngExt};
use crate::time::Instant;

/// Identifies one connection of a [`UtpSocket`] (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What happened to a connection; drain with [`UtpSocket::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Our SYN was answered: the outgoing connection is open.
    Connected(ConnId),
    /// A peer opened a connection to us (its address is proven).
    Accepted(ConnId),
    /// Bytes (or the end of the stream) are ready for [`UtpSocket::read`].
    Readable(ConnId),
    /// The send buffer, full at the last [`UtpSocket::write`], has room again.
    Writable(ConnId),
    /// The connection is over. Bytes already received stay readable for a while.
    Closed(ConnId, CloseReason),
}

/// Socket-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Datagrams handed to [`UtpSocket::handle_datagram`].
    pub datagrams_in: u64,
    /// Datagrams returned by [`UtpSocket::poll_transmit`].
    pub datagrams_out: u64,
    /// Datagrams that did not parse as uTP.
    pub invalid: u64,
    /// Packets for no known connection.
    pub unknown: u64,
    /// SYNs dropped by the connection caps or because incoming connections are off.
    pub syn_dropped: u64,
    /// SYNs that created a connection.
    pub syn_accepted: u64,
    /// RESETs sent in answer to packets for unknown connections.
    pub resets_sent: u64,
    /// RESETs the rate limit held back.
    pub resets_suppressed: u64,
}

/// A snapshot of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnStats {
    /// The peer.
    pub remote: SocketAddr,
    /// Smoothed round-trip time, once measured.
    pub rtt: Option<Duration>,
    /// Congestion window in bytes.
    pub cwnd: usize,
    /// The last queueing delay LEDBAT saw.
    pub queue_delay: Duration,
    /// Bytes written and not yet acknowledged.
    pub send_buffered: usize,
    /// Bytes received and not yet read.
    pub recv_buffered: usize,
    /// Packet counters.
    pub counters: Counters,
}

#[derive(Debug)]
struct Slot {
    conn: Conn,
    deadline: Option<Instant>,
    queued: bool,
    half_open: bool,
}

/// All uTP connections on one UDP socket; see the module docs.
#[derive(Debug)]
pub struct UtpSocket {
    cfg: UtpConfig,
    rng: CoreRng,
    conns: HashMap<ConnId, Slot>,
    routes: HashMap<(SocketAddr, u16), ConnId>,
    next_id: u64,
    timers: BTreeSet<(Instant, ConnId)>,
    ready: VecDeque<ConnId>,
    events: VecDeque<Event>,
    resets: VecDeque<(SocketAddr, Header)>,
    reset_tokens: u32,
    reset_refill: Option<Instant>,
    half_open: usize,
    due: Vec<ConnId>,
    stats: SocketStats,
}

impl UtpSocket {
    /// A socket with no connections; `rng` draws connection ids and initial sequence numbers.
    pub fn new(cfg: UtpConfig, rng: CoreRng) -> UtpSocket {
        UtpSocket {
            reset_tokens: cfg.reset_burst,
            cfg,
            rng,
            conns: HashMap::new(),
            routes: HashMap::new(),
            next_id: 0,
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            resets: VecDeque::new(),
            reset_refill: None,
            half_open: 0,
            due: Vec::new(),
            stats: SocketStats::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &UtpConfig {
        &self.cfg
    }

    /// Socket-wide counters.
    pub fn stats(&self) -> SocketStats {
        self.stats
    }

    /// How many connections exist (open, half-open or lingering).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Opens a connection to `remote`: a SYN is queued for [`UtpSocket::poll_transmit`]. Bytes may be
    /// written at once; they go out when the connection is up.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> Result<ConnId, ConnectError> {
        if self.conns.len() >= self.cfg.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let mut recv_id = None;
        for _ in 0..32 {
            let r: u16 = self.rng.random();
            if !self.routes.contains_key(&(remote, r))
                && !self.routes.contains_key(&(remote, r.wrapping_add(1)))
            {
                recv_id = Some(r);
                break;
            }
        }
        let recv_id = recv_id.ok_or(ConnectError::NoFreeId)?;
        let seq: u16 = self.rng.random();
        let conn = Conn::connect(now, remote, recv_id, seq, &self.cfg);
        Ok(self.insert(conn, false, now))
    }

    fn insert(&mut self, conn: Conn, half_open: bool, now: Instant) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.routes.insert((conn.remote, conn.recv_id), id);
        self.conns.insert(
            id,
            Slot {
                conn,
                deadline: None,
                queued: false,
                half_open,
            },
        );
        self.after(id, Some(now), true);
        id
    }

    /// Handles one datagram from `from`. Returns false when it is not a uTP packet (the caller may
    /// hand it to another protocol on the same socket).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> bool {
        self.stats.datagrams_in += 1;
        let Ok(p) = Packet::parse(bytes) else {
            self.stats.invalid += 1;
            return false;
        };
        let h = p.header;
        let key = if h.ty == PacketType::Syn {
            (from, h.connection_id.wrapping_add(1))
        } else {
            (from, h.connection_id)
        };
        if let Some(&id) = self.routes.get(&key) {
            if let Some(slot) = self.conns.get_mut(&id) {
                slot.conn.handle_packet(now, &p, &self.cfg);
            }
            self.after(id, Some(now), true);
            return true;
        }
        match h.ty {
            PacketType::Syn => self.accept(now, from, &h),
            PacketType::Reset => {
                // Our own RESETs for unknown connections echo the id the peer sent with.
                self.stats.unknown += 1;
                for cand in [
                    h.connection_id.wrapping_sub(1),
                    h.connection_id.wrapping_add(1),
                ] {
                    let Some(&id) = self.routes.get(&(from, cand)) else {
                        continue;
                    };
                    if let Some(slot) = self.conns.get_mut(&id) {
                        if slot.conn.send_id == h.connection_id {
                            slot.conn.handle_packet(now, &p, &self.cfg);
                            self.after(id, Some(now), true);
                            break;
                        }
                    }
                }
            }
            _ => {
                self.stats.unknown += 1;
                self.send_reset_for_unknown(now, from, &h);
            }
        }
        true
    }

    fn accept(&mut self, now: Instant, from: SocketAddr, syn: &Header) {
        if !self.cfg.accept_incoming
            || self.conns.len() >= self.cfg.max_connections
            || self.half_open >= self.cfg.max_half_open
        {
            self.stats.syn_dropped += 1;
            return;
        }
        self.stats.syn_accepted += 1;
        let seq: u16 = self.rng.random();
        let conn = Conn::accept(now, from, syn, seq, &self.cfg);
        self.half_open += 1;
        self.insert(conn, true, now);
    }

    fn send_reset_for_unknown(&mut self, now: Instant, to: SocketAddr, h: &Header) {
        // Refill the bucket: one token per 1/reset_rate seconds, up to the burst.
        let rate = u64::from(self.cfg.reset_rate);
        let last = *self.reset_refill.get_or_insert(now);
        if let Some(ns) = 1_000_000_000u64.checked_div(rate) {
            let per_token = Duration::from_nanos(ns);
            let new = ((now - last).as_nanos() / per_token.as_nanos().max(1)) as u64;
            if new > 0 {
                self.reset_tokens = (u64::from(self.reset_tokens) + new)
                    .min(u64::from(self.cfg.reset_burst))
                    as u32;
                self.reset_refill = Some(last + per_token.saturating_mul(new as u32));
            }
        }
        if self.reset_tokens == 0 || self.resets.len() >= self.cfg.reset_burst as usize {
            self.stats.resets_suppressed += 1;
            return;
        }
        self.reset_tokens -= 1;
        self.stats.resets_sent += 1;
        let reset = Header {
            ty: PacketType::Reset,
            connection_id: h.connection_id,
            timestamp_us: super::conn::micros(now),
            timestamp_diff_us: 0,
            wnd_size: 0,
            seq_nr: self.rng.random(),
            ack_nr: h.seq_nr,
        };
        self.resets.push_back((to, reset));
    }

    /// Bookkeeping after anything touched connection `id`: events out, timer re-armed, transmit queue,
    /// and (when `now` is given) reaping a connection whose linger is over.
    fn after(&mut self, id: ConnId, now: Option<Instant>, requeue: bool) {
        let Some(slot) = self.conns.get_mut(&id) else {
            return;
        };
        let evs = slot.conn.take_events();
        if evs & ev::ACCEPTED != 0 && slot.half_open {
            slot.half_open = false;
            self.half_open -= 1;
            slot.conn.announced = true;
            self.events.push_back(Event::Accepted(id));
        }
        if slot.half_open && slot.conn.is_closed() {
            // Never confirmed: forget it without telling anyone.
            slot.half_open = false;
            self.half_open -= 1;
        }
        if slot.conn.announced {
            if evs & ev::CONNECTED != 0 {
                self.events.push_back(Event::Connected(id));
            }
            if evs & ev::READABLE != 0 {
                self.events.push_back(Event::Readable(id));
            }
            if evs & ev::WRITABLE != 0 {
                self.events.push_back(Event::Writable(id));
            }
            if evs & ev::CLOSED != 0 {
                if let State::Closed(r) = slot.conn.state {
                    self.events.push_back(Event::Closed(id, r));
                }
            }
        }
        if let Some(now) = now {
            let reap = slot.conn.reapable(now, &self.cfg)
                || (!slot.conn.announced && slot.conn.is_closed());
            if reap {
                self.remove(id);
                return;
            }
        }
        // The table only ever moves a connection's entry earlier. A deadline that moved later (each
        // ack pushes the retransmission timer back) keeps its old entry, which fires early and
        // harmlessly and is then replaced: no table churn per datagram.
        if let Some(d) = slot.conn.next_deadline(&self.cfg) {
            if slot.deadline.is_none_or(|old| d < old) {
                if let Some(old) = slot.deadline {
                    self.timers.remove(&(old, id));
                }
                self.timers.insert((d, id));
                slot.deadline = Some(d);
            }
        }
        if requeue && !slot.queued && slot.conn.wants_transmit() {
            slot.queued = true;
            self.ready.push_back(id);
        }
    }

    fn remove(&mut self, id: ConnId) {
        if let Some(slot) = self.conns.remove(&id) {
            if let Some(d) = slot.deadline {
                self.timers.remove(&(d, id));
            }
            if slot.half_open {
                self.half_open -= 1;
            }
            if self.routes.get(&(slot.conn.remote, slot.conn.recv_id)) == Some(&id) {
                self.routes.remove(&(slot.conn.remote, slot.conn.recv_id));
            }
        }
    }

    /// The next datagram to send, written into `buf` (cleared first); returns its destination, or
    /// `None` when nothing is due. Call until `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<SocketAddr> {
        if let Some((to, h)) = self.resets.pop_front() {
            buf.clear();
            write_header(&h, None, buf);
            self.stats.datagrams_out += 1;
            return Some(to);
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(slot) = self.conns.get_mut(&id) else {
                continue;
            };
            slot.queued = false;
            if slot.conn.poll_transmit(now, &self.cfg, buf) {
                let to = slot.conn.remote;
                self.stats.datagrams_out += 1;
                self.after(id, None, true);
                return Some(to);
            }
            // Blocked (window, Nagle): the next input re-queues it.
            self.after(id, None, false);
        }
        None
    }

    /// The earliest deadline of any connection; call [`UtpSocket::handle_timeout`] then. It may be a
    /// little early (a deadline that moved later is re-armed when its old time comes), never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        for &(t, id) in &self.timers {
            if t > now {
                break;
            }
            due.push(id);
        }
        for &id in &due {
            if let Some(slot) = self.conns.get_mut(&id) {
                if let Some(d) = slot.deadline.take() {
                    self.timers.remove(&(d, id));
                }
                slot.conn.handle_timeout(now, &self.cfg);
            }
            self.after(id, Some(now), true);
        }
        self.due = due;
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues bytes on connection `id`; returns how many fit (0 when the send buffer is full: an
    /// [`Event::Writable`] follows when it drains).
    pub fn write(&mut self, id: ConnId, data: &[u8]) -> Result<usize, StreamError> {
        let slot = self
            .conns
            .get_mut(&id)
            .ok_or(StreamError::UnknownConnection)?;
        let n = slot.conn.write(data, &self.cfg)?;
        self.after(id, None, true);
        Ok(n)
    }

    /// Reads received bytes of connection `id`. `Ok(0)` (with a non-empty `buf`) is the end of the
    /// peer's stream; [`StreamError::WouldBlock`] means wait for [`Event::Readable`].
    pub fn read(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, StreamError> {
        let slot = self
            .conns
            .get_mut(&id)
            .ok_or(StreamError::UnknownConnection)?;
        let n = slot.conn.read(buf, &self.cfg)?;
        self.after(id, None, true);
        Ok(n)
    }

    /// Closes the write side of `id` gracefully: a FIN follows the bytes already written. The
    /// connection closes ([`Event::Closed`] with [`CloseReason::Finished`]) once both sides have.
    pub fn close(&mut self, id: ConnId) {
        if let Some(slot) = self.conns.get_mut(&id) {
            slot.conn.shutdown();
            self.after(id, None, true);
        }
    }

    /// Drops `id` at once and sends the peer a RESET (unless it is already closed). No event follows.
    pub fn abort(&mut self, now: Instant, id: ConnId) {
        let Some(slot) = self.conns.get_mut(&id) else {
            return;
        };
        if !slot.conn.is_closed() && slot.conn.state != State::SynSent {
            let h = slot.conn.abort(now, &self.cfg);
            self.resets.push_back((slot.conn.remote, h));
        }
        self.remove(id);
    }

    /// The peer's address of `id`.
    pub fn remote(&self, id: ConnId) -> Option<SocketAddr> {
        self.conns.get(&id).map(|s| s.conn.remote)
    }

    /// A snapshot of connection `id`.
    pub fn conn_stats(&self, id: ConnId) -> Option<ConnStats> {
        self.conns.get(&id).map(|s| ConnStats {
            remote: s.conn.remote,
            rtt: s.conn.rtt(),
            cwnd: s.conn.cwnd(),
            queue_delay: s.conn.queue_delay(),
            send_buffered: s.conn.send_buffered(),
            recv_buffered: s.conn.recv_buffered(),
            counters: s.conn.counters,
        })
    }
}

//! uTP (BEP 29) as one more transport under the same peer session.
//!
//! A uTP stream is a peer connection like a TCP one: it has an engine [`ConnId`] of kind peer, a
//! `Conn` with its `PeerSession`, and its bytes take the same path (the MSE layer, then the wire
//! decoder; the session's bytes through the MSE transform). Only the bottom differs: instead of
//! `Output::Connect` / `Send` / `Close` for the driver, the engine drives the [`UtpSocket`] that lives
//! here, whose datagrams leave through `Output::SendDatagram` on the one UDP socket (shared with the
//! DHT and the UDP trackers; `udp.rs` routes uTP datagrams here). So drivers need no uTP code.
//!
//! - **Reads**: the socket's `Readable` event moves every in-order byte into one buffer that goes to
//!   `handle_read_owned`, as a TCP read would.
//! - **Sends, with backpressure**: `flush` and the MSE handshake hand their bytes to
//!   [`UtpGlue::send_bytes`]; what the
//!   socket's bounded send buffer ([`UtpConfig::send_buffer`]) does not take waits here and counts as
//!   unflushed (so the engine's send window, 1 MiB, caps it, and disk reads for the peer pause as with a
//!   slow TCP socket); the socket's `Writable` event moves it on, like `handle_flushed`.
//! - **Timers**: the socket's deadline and the TCP fall-backs are one timer-table entry,
//!   `TimerKey::Utp`.
//! - **Policy** ([`Transport`]): `utp` dials and accepts only uTP; `tcp` only TCP; `both` (the
//!   default) accepts both and dials uTP to peers known to speak it (PEX flag 0x04, or one that
//!   connected to us over uTP) and TCP to the rest, falling back to TCP on the same connection id
//!   when a uTP SYN is unanswered for [`SYN_FALLBACK`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::time::Instant;
use crate::utp::{self, SocketStats, StreamError, UtpConfig, UtpSocket};

use super::io::{ConnId, Output};
use super::torrent::insert_capped;
use super::Engine;

/// How long a uTP dial waits for the SYN's answer before `both` tries TCP instead.
pub const SYN_FALLBACK: Duration = Duration::from_secs(3);

/// Most addresses remembered as speaking uTP (or as not answering it).
const MAX_KNOWN: usize = 4096;

/// Which transports peer connections use (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// TCP only: uTP SYNs are not accepted, nothing is dialled over uTP.
    Tcp,
    /// uTP only: every dial is uTP, incoming TCP connections are refused.
    Utp,
    /// Both (the default): accept both; dial uTP to peers known to speak it, TCP otherwise, and fall
    /// back to TCP when a uTP dial gets no answer.
    #[default]
    Both,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Transport, String> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "utp" => Ok(Transport::Utp),
            "both" => Ok(Transport::Both),
            _ => Err(format!(
                "unknown transport {s:?} (expected utp, tcp or both)"
            )),
        }
    }
}

/// The engine's uTP socket and which peer connections ride on it.
#[derive(Debug)]
pub(super) struct UtpGlue {
    transport: Transport,
    socket: UtpSocket,
    by_engine: BTreeMap<ConnId, utp::ConnId>,
    by_utp: HashMap<utp::ConnId, ConnId>,
    /// Session bytes the socket's send buffer did not take yet, per connection (in order).
    pending: BTreeMap<ConnId, Vec<Bytes>>,
    /// uTP dials under `both` that go to TCP if not answered by then.
    fallback: BTreeMap<ConnId, Instant>,
    /// Addresses known to speak uTP (PEX flag 0x04, or they connected to us over it).
    speaks: BTreeSet<SocketAddr>,
    /// Addresses whose uTP dial went unanswered: TCP from now on.
    silent: BTreeSet<SocketAddr>,
    /// Dials the socket could not start (its connection cap), failed at the end of the input.
    failed: Vec<ConnId>,
    /// One datagram as the socket writes it.
    scratch: Vec<u8>,
    /// Datagrams are cut from this buffer, so sending allocates once per many datagrams.
    out: BytesMut,
}

impl UtpGlue {
    pub(super) fn new(transport: Transport, mut cfg: UtpConfig, rng: crate::rng::CoreRng) -> Self {
        cfg.accept_incoming &= transport != Transport::Tcp;
        UtpGlue {
            transport,
            socket: UtpSocket::new(cfg, rng),
            by_engine: BTreeMap::new(),
            by_utp: HashMap::new(),
            pending: BTreeMap::new(),
            fallback: BTreeMap::new(),
            speaks: BTreeSet::new(),
            silent: BTreeSet::new(),
            failed: Vec::new(),
            scratch: Vec::with_capacity(2048),
            out: BytesMut::new(),
        }
    }

    /// Whether `addr` is dialled over uTP first under `both`.
    pub(super) fn speaks(&self, addr: &SocketAddr) -> bool {
        self.speaks.contains(addr) && !self.silent.contains(addr)
    }

    /// Whether `id` is a uTP connection (for PEX flag 0x04).
    pub(super) fn carries(&self, id: ConnId) -> bool {
        self.by_engine.contains_key(&id)
    }

    /// A peer said (PEX flag 0x04) that `addr` speaks uTP.
    pub(super) fn learn(&mut self, addr: SocketAddr) {
        if self.transport == Transport::Both && !self.silent.contains(&addr) {
            insert_capped(&mut self.speaks, addr, MAX_KNOWN);
        }
    }

    /// Sends a peer connection's bytes: into its uTP stream, or as `Output::Send` for the driver.
    /// Returns how many of them are now unflushed (all of a TCP send; for uTP, what its send
    /// buffer did not take yet).
    pub(super) fn send_bytes(
        &mut self,
        id: ConnId,
        data: Bytes,
        outputs: &mut VecDeque<Output>,
    ) -> usize {
        if self.by_engine.contains_key(&id) {
            return self.send(id, data);
        }
        let n = data.len();
        outputs.push_back(Output::Send { conn: id, data });
        n
    }

    /// Queues `data` on uTP connection `id`; returns how many of its bytes still wait here.
    fn send(&mut self, id: ConnId, data: Bytes) -> usize {
        let Some(&u) = self.by_engine.get(&id) else {
            return 0;
        };
        let waiting = self.pending.entry(id).or_default();
        if !waiting.is_empty() {
            let n = data.len();
            waiting.push(data);
            return n;
        }
        let taken = match self.socket.write(u, &data) {
            Ok(n) => n,
            // Closed under us: the socket's `Closed` event ends the connection; drop the bytes.
            Err(_) => data.len(),
        };
        if taken < data.len() {
            waiting.push(data.slice(taken..));
        }
        data.len() - taken
    }

    /// Moves waiting bytes of `id` into the socket; returns how many it took.
    fn write_pending(&mut self, id: ConnId) -> usize {
        let (Some(&u), Some(waiting)) = (self.by_engine.get(&id), self.pending.get_mut(&id)) else {
            return 0;
        };
        let mut moved = 0;
        let mut done = 0;
        for chunk in waiting.iter_mut() {
            let n = match self.socket.write(u, chunk) {
                Ok(n) => n,
                Err(_) => chunk.len(),
            };
            moved += n;
            if n < chunk.len() {
                *chunk = chunk.slice(n..);
                break;
            }
            done += 1;
        }
        waiting.drain(..done);
        moved
    }

    /// Socket-wide counters.
    pub(super) fn stats(&self) -> SocketStats {
        self.socket.stats()
    }

    /// The next deadline: the socket's, or a TCP fall-back.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let fb = self.fallback.values().min().copied();
        match (self.socket.poll_timeout(), fb) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets `id`'s mapping; returns its uTP connection.
    fn unmap(&mut self, id: ConnId) -> Option<utp::ConnId> {
        let u = self.by_engine.remove(&id)?;
        self.by_utp.remove(&u);
        self.pending.remove(&id);
        self.fallback.remove(&id);
        Some(u)
    }

    fn map(&mut self, id: ConnId, u: utp::ConnId) {
        self.by_engine.insert(id, u);
        self.by_utp.insert(u, id);
    }
}

impl Engine {
    /// Decides how a new outgoing connection `id` to `addr` is opened: over uTP (true: the SYN is
    /// queued here) or by the driver over TCP (false: the caller sends `Output::Connect`).
    pub(super) fn utp_dial(&mut self, now: Instant, id: ConnId, addr: SocketAddr) -> bool {
        let g = &mut self.utp;
        let use_utp = match g.transport {
            Transport::Tcp => false,
            Transport::Utp => true,
            Transport::Both => g.speaks(&addr),
        };
        if !use_utp {
            return false;
        }
        match g.socket.connect(now, addr) {
            Ok(u) => {
                g.map(id, u);
                if g.transport == Transport::Both {
                    g.fallback.insert(id, now + SYN_FALLBACK);
                }
                true
            }
            Err(_) if g.transport == Transport::Utp => {
                g.failed.push(id);
                true
            }
            Err(_) => false,
        }
    }

    /// A peer connection is being forgotten (`drop_conn`): close its uTP stream (gracefully once it
    /// is up: a FIN after the bytes written). Returns false when `id` is not uTP (the driver closes
    /// it).
    pub(super) fn utp_dropped(&mut self, now: Instant, id: ConnId, connected: bool) -> bool {
        let Some(u) = self.utp.unmap(id) else {
            return false;
        };
        if connected {
            self.utp.socket.close(u);
        } else {
            self.utp.socket.abort(now, u);
        }
        true
    }

    /// Whether incoming TCP connections are refused (`--transport utp`).
    pub(super) fn utp_refuses_tcp(&self) -> bool {
        self.utp.transport == Transport::Utp
    }

    /// A uTP datagram arrived on the shared UDP socket.
    pub(super) fn utp_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.utp.socket.handle_datagram(now, from, data);
    }

    /// `TimerKey::Utp` is due: the socket's timers, then TCP fall-backs.
    pub(super) fn utp_timeout(&mut self, now: Instant) {
        self.utp.socket.handle_timeout(now);
        let due: Vec<ConnId> = self
            .utp
            .fallback
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.utp_to_tcp(now, id);
        }
        self.utp_events(now);
    }

    /// A uTP dial under `both` got no answer: the same connection id is dialled over TCP.
    fn utp_to_tcp(&mut self, now: Instant, id: ConnId) {
        let Some(u) = self.utp.unmap(id) else {
            return;
        };
        self.utp.socket.abort(now, u);
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let addr = c.addr;
        self.utp.speaks.remove(&addr);
        insert_capped(&mut self.utp.silent, addr, MAX_KNOWN);
        self.outputs.push_back(Output::Connect {
            conn: id,
            addr,
            tls: None,
        });
    }

    /// Handles what the socket reported (after a datagram or its timers), with the same handlers a
    /// driver's TCP inputs take.
    pub(super) fn utp_events(&mut self, now: Instant) {
        while let Some(ev) = self.utp.socket.poll_event() {
            match ev {
                utp::Event::Connected(u) => {
                    let Some(&id) = self.utp.by_utp.get(&u) else {
                        continue;
                    };
                    self.utp.fallback.remove(&id);
                    if let Some(c) = self.conns.get(&id) {
                        let addr = c.addr;
                        if self.utp.transport == Transport::Both {
                            insert_capped(&mut self.utp.speaks, addr, MAX_KNOWN);
                        }
                    }
                    self.handle_connected(now, id);
                }
                utp::Event::Accepted(u) => {
                    let Some(remote) = self.utp.socket.remote(u) else {
                        continue;
                    };
                    match self.accept_peer(now, remote) {
                        Some(id) => {
                            self.utp.map(id, u);
                            if self.utp.transport == Transport::Both {
                                self.utp.silent.remove(&remote);
                                insert_capped(&mut self.utp.speaks, remote, MAX_KNOWN);
                            }
                        }
                        None => self.utp.socket.abort(now, u),
                    }
                }
                utp::Event::Readable(u) => self.utp_readable(now, u),
                utp::Event::Writable(u) => {
                    let Some(&id) = self.utp.by_utp.get(&u) else {
                        continue;
                    };
                    let n = self.utp.write_pending(id);
                    self.handle_flushed(now, id, n);
                }
                utp::Event::Closed(u, reason) => {
                    let Some(&id) = self.utp.by_utp.get(&u) else {
                        continue;
                    };
                    let connected = self.conns.get(&id).is_some_and(|c| c.connected);
                    if connected {
                        self.handle_closed(now, id);
                    } else if self.utp.fallback.contains_key(&id) {
                        self.utp_to_tcp(now, id);
                    } else {
                        self.handle_connect_failed(now, id, &format!("uTP: {reason}"));
                    }
                }
            }
        }
    }

    /// Reads everything ready on `u` into one buffer for the peer session; the end of the peer's
    /// stream closes the connection. Bytes for a connection the engine already dropped are read
    /// and discarded, so a lingering stream holds no memory.
    fn utp_readable(&mut self, now: Instant, u: utp::ConnId) {
        let Some(id) = self.utp.by_utp.get(&u).copied() else {
            let mut sink = [0u8; 4096];
            while matches!(self.utp.socket.read(u, &mut sink), Ok(n) if n > 0) {}
            return;
        };
        let ready = self.utp.socket.conn_stats(u).map_or(0, |s| s.recv_buffered);
        let mut end = false;
        if ready > 0 {
            let mut buf = BytesMut::zeroed(ready);
            match self.utp.socket.read(u, &mut buf) {
                Ok(n) => buf.truncate(n),
                Err(_) => buf.clear(),
            }
            if !buf.is_empty() {
                self.handle_read_owned(now, id, buf);
            }
        }
        // Everything ready was read: what is left to learn is whether the stream ended.
        let mut probe = [0u8; 1];
        if self.utp.by_utp.contains_key(&u) {
            end = !matches!(
                self.utp.socket.read(u, &mut probe),
                Err(StreamError::WouldBlock)
            );
        }
        if end && self.utp.by_utp.contains_key(&u) {
            self.handle_closed(now, id);
        }
    }

    /// The end of every input (`maintain`): dials the socket could not start fail, and every
    /// datagram the socket has to send goes out as `Output::SendDatagram`.
    pub(super) fn utp_transmit(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.utp.failed) {
            self.drop_conn(now, id, "uTP: too many connections", false);
        }
        let g = &mut self.utp;
        while let Some(to) = g.socket.poll_transmit(now, &mut g.scratch) {
            if g.out.capacity() - g.out.len() < g.scratch.len() {
                g.out.reserve(64 * 1024);
            }
            g.out.extend_from_slice(&g.scratch);
            let data = g.out.split().freeze();
            self.outputs.push_back(Output::SendDatagram { to, data });
        }
    }

    /// uTP socket counters (datagrams, unknown-connection packets, RESETs sent and held back).
    pub fn utp_stats(&self) -> SocketStats {
        self.utp.stats()
    }

    /// How many uTP connections the socket holds (open, half-open or lingering).
    pub fn utp_connections(&self) -> usize {
        self.utp.socket.connections()
    }

    /// Whether peer connection `conn` runs over uTP.
    pub fn is_utp(&self, conn: ConnId) -> bool {
        self.utp.carries(conn)
    }
}

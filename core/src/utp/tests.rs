//! uTP on a virtual clock: two sockets joined by a scripted network in which each test decides the fate
//! of every datagram (deliver after a delay, drop, duplicate).

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;

use super::packet::{looks_like_utp, write_header, Header, Packet, PacketType};
use super::sim::{pattern_byte, run_transfer, LinkConfig};
use super::*;
use crate::rng::seeded;
use crate::time::Instant;

const A: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    1,
);
const B: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
    2,
);

/// What the scripted network does with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver(Duration),
    Drop,
    Twice(Duration, Duration),
}

/// Direction of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dir {
    AtoB,
    BtoA,
}

struct Datagram {
    at: Instant,
    order: u64,
    dir: Dir,
    bytes: Vec<u8>,
}

struct Net {
    now: Instant,
    a: UtpSocket,
    b: UtpSocket,
    air: Vec<Datagram>,
    order: u64,
    /// Every datagram offered, with its fate (for assertions).
    log: Vec<(Dir, Header, usize, Fate)>,
    a_events: Vec<Event>,
    b_events: Vec<Event>,
}

const LATENCY: Duration = Duration::from_millis(10);

impl Net {
    fn new(cfg: UtpConfig, seed: u64) -> Net {
        Net {
            now: Instant::ZERO,
            a: UtpSocket::new(cfg.clone(), seeded(seed)),
            b: UtpSocket::new(cfg, seeded(seed + 1000)),
            air: Vec::new(),
            order: 0,
            log: Vec::new(),
            a_events: Vec::new(),
            b_events: Vec::new(),
        }
    }

    fn sock(&mut self, dir: Dir) -> &mut UtpSocket {
        match dir {
            Dir::AtoB => &mut self.a,
            Dir::BtoA => &mut self.b,
        }
    }

    /// Collects every datagram both sides want to send and gives each its fate.
    fn transmit(&mut self, fate: &mut impl FnMut(Dir, &Packet<'_>) -> Fate) {
        let mut buf = Vec::new();
        for dir in [Dir::AtoB, Dir::BtoA] {
            let now = self.now;
            while let Some(to) = self.sock(dir).poll_transmit(now, &mut buf) {
                assert_eq!(to, if dir == Dir::AtoB { B } else { A });
                assert!(looks_like_utp(&buf));
                let p = Packet::parse(&buf).expect("we send valid packets");
                assert!(p.payload.len() <= 1400, "payload {}", p.payload.len());
                let f = fate(dir, &p);
                self.log.push((dir, p.header, p.payload.len(), f));
                let put = |d: Duration, net: &mut Net| {
                    net.order += 1;
                    net.air.push(Datagram {
                        at: now + d,
                        order: net.order,
                        dir,
                        bytes: buf.clone(),
                    });
                };
                match f {
                    Fate::Deliver(d) => put(d, self),
                    Fate::Drop => {}
                    Fate::Twice(d1, d2) => {
                        put(d1, self);
                        put(d2, self);
                    }
                }
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }

    /// One step: send what is due, advance to the next arrival or timer, deliver and fire timers.
    /// Returns false when nothing at all is pending.
    fn step(&mut self, fate: &mut impl FnMut(Dir, &Packet<'_>) -> Fate) -> bool {
        self.transmit(fate);
        self.drain_events();
        let next_air = self.air.iter().map(|d| d.at).min();
        let next = [next_air, self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else {
            return false;
        };
        self.now = self.now.max(next);
        let now = self.now;
        self.air.sort_by_key(|d| (d.at, d.order));
        let due: Vec<Datagram> = {
            let split = self.air.partition_point(|d| d.at <= now);
            self.air.drain(..split).collect()
        };
        for d in due {
            match d.dir {
                Dir::AtoB => assert!(self.b.handle_datagram(now, A, &d.bytes)),
                Dir::BtoA => assert!(self.a.handle_datagram(now, B, &d.bytes)),
            }
        }
        if self.a.poll_timeout().is_some_and(|t| t <= now) {
            self.a.handle_timeout(now);
            assert!(self.a.poll_timeout().is_none_or(|t| t > now), "timer spins");
        }
        if self.b.poll_timeout().is_some_and(|t| t <= now) {
            self.b.handle_timeout(now);
            assert!(self.b.poll_timeout().is_none_or(|t| t > now), "timer spins");
        }
        self.drain_events();
        true
    }

    /// Steps until `done` holds (checked between steps) or `limit` of virtual time passes.
    fn run_until(
        &mut self,
        limit: Duration,
        fate: &mut impl FnMut(Dir, &Packet<'_>) -> Fate,
        mut done: impl FnMut(&mut Net) -> bool,
    ) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now > end || !self.step(fate) {
                return done(self);
            }
        }
    }

    fn accepted(&self) -> Option<ConnId> {
        self.b_events.iter().find_map(|e| match e {
            Event::Accepted(id) => Some(*id),
            _ => None,
        })
    }

    /// Connects A to B over a clean link; returns (A's id, B's id).
    fn handshake(&mut self) -> (ConnId, ConnId) {
        let a_id = self.a.connect(self.now, B).unwrap();
        // The initiator confirms with an ack even when it has nothing to write.
        assert!(self.run_until(Duration::from_secs(5), &mut clean, |n| n
            .accepted()
            .is_some()));
        (a_id, self.accepted().unwrap())
    }
}

fn clean(_: Dir, _: &Packet<'_>) -> Fate {
    Fate::Deliver(LATENCY)
}

fn closed(events: &[Event], id: ConnId) -> Option<CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed(i, r) if *i == id => Some(*r),
        _ => None,
    })
}

fn data(n: usize, salt: u64) -> Vec<u8> {
    (0..n as u64).map(|i| pattern_byte(i + salt)).collect()
}

/// Writes all of `bytes` from `from` (a socket's conn) as the buffer allows, returns how many went.
fn push(s: &mut UtpSocket, id: ConnId, bytes: &[u8], written: &mut usize) {
    while *written < bytes.len() {
        match s.write(id, &bytes[*written..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => *written += n,
        }
    }
}

fn pull(s: &mut UtpSocket, id: ConnId, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(id, &mut buf) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
    }
}

/// Sends `payload` from A to B under `fate`, A closing after it; returns what B read and whether B
/// saw the end of the stream.
fn transfer(
    net: &mut Net,
    a_id: ConnId,
    b_id: ConnId,
    payload: &[u8],
    limit: Duration,
    fate: &mut impl FnMut(Dir, &Packet<'_>) -> Fate,
) -> (Vec<u8>, bool) {
    let mut written = 0;
    let mut got = Vec::new();
    let mut eof = false;
    let mut shut = false;
    net.run_until(limit, fate, |n| {
        push(&mut n.a, a_id, payload, &mut written);
        if written == payload.len() && !shut {
            n.a.close(a_id);
            shut = true;
        }
        eof |= pull(&mut n.b, b_id, &mut got);
        eof || closed(&n.a_events, a_id).is_some() || closed(&n.b_events, b_id).is_some()
    });
    (got, eof)
}

#[test]
fn handshake_follows_bep29() {
    let mut net = Net::new(UtpConfig::default(), 1);
    let a_id = net.a.connect(Instant::ZERO, B).unwrap();
    let (a_id2, b_id) = {
        net.handshake_after_connect();
        (a_id, net.accepted().unwrap())
    };
    let (_, syn, _, _) = net.log[0];
    assert_eq!(syn.ty, PacketType::Syn);
    assert_eq!(syn.ack_nr, 0);
    let (dir, syn_ack, len, _) = net.log[1];
    assert_eq!((dir, syn_ack.ty, len), (Dir::BtoA, PacketType::State, 0));
    // The acceptor answers on the SYN's id; the initiator then sends on id + 1.
    assert_eq!(syn_ack.connection_id, syn.connection_id);
    assert_eq!(syn_ack.ack_nr, syn.seq_nr);
    assert_eq!(syn_ack.timestamp_diff_us, LATENCY.as_micros() as u32);
    let (dir, confirm, _, _) = net.log[2];
    assert_eq!((dir, confirm.ty), (Dir::AtoB, PacketType::State));
    assert_eq!(confirm.connection_id, syn.connection_id.wrapping_add(1));
    assert_eq!(confirm.seq_nr, syn.seq_nr.wrapping_add(1));
    assert_eq!(confirm.ack_nr, syn_ack.seq_nr.wrapping_sub(1));
    assert_eq!(net.a_events, vec![Event::Connected(a_id2)]);
    assert_eq!(net.b_events, vec![Event::Accepted(b_id)]);
    assert_eq!(net.a.conn_stats(a_id).unwrap().rtt, Some(2 * LATENCY));
    assert_eq!(net.b.remote(b_id), Some(A));
}

impl Net {
    fn handshake_after_connect(&mut self) {
        assert!(self.run_until(Duration::from_secs(5), &mut clean, |n| n
            .accepted()
            .is_some()));
    }
}

#[test]
fn in_order_delivery_both_ways_and_fin() {
    let mut net = Net::new(UtpConfig::default(), 2);
    let (a_id, b_id) = net.handshake();
    let ab = data(100_000, 0);
    let ba = data(30_000, 7);
    let (mut wa, mut wb) = (0, 0);
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let (mut eof_a, mut eof_b) = (false, false);
    let (mut shut_a, mut shut_b) = (false, false);
    assert!(net.run_until(Duration::from_secs(30), &mut clean, |n| {
        push(&mut n.a, a_id, &ab, &mut wa);
        push(&mut n.b, b_id, &ba, &mut wb);
        if wa == ab.len() && !shut_a {
            n.a.close(a_id);
            shut_a = true;
        }
        if wb == ba.len() && !shut_b {
            n.b.close(b_id);
            shut_b = true;
        }
        eof_b |= pull(&mut n.b, b_id, &mut got_b);
        eof_a |= pull(&mut n.a, a_id, &mut got_a);
        closed(&n.a_events, a_id).is_some() && closed(&n.b_events, b_id).is_some()
    }));
    assert!(eof_a && eof_b);
    assert_eq!(got_b, ab);
    assert_eq!(got_a, ba);
    assert_eq!(closed(&net.a_events, a_id), Some(CloseReason::Finished));
    assert_eq!(closed(&net.b_events, b_id), Some(CloseReason::Finished));
    // Both FINs went out once, and nothing was retransmitted on a clean link.
    let fins = net.log.iter().filter(|l| l.1.ty == PacketType::Fin).count();
    assert_eq!(fins, 2);
    assert_eq!(net.a.conn_stats(a_id).unwrap().counters.timeouts, 0);
    // Reading after the end keeps saying so; then the lingering connections are reaped.
    assert_eq!(net.a.read(a_id, &mut [0u8; 8]), Ok(0));
    net.run_until(Duration::from_secs(60), &mut clean, |n| {
        n.a.connections() == 0 && n.b.connections() == 0
    });
    assert_eq!((net.a.connections(), net.b.connections()), (0, 0));
    assert_eq!(
        net.a.read(a_id, &mut [0u8; 8]),
        Err(StreamError::UnknownConnection)
    );
}

#[test]
fn packets_are_full_sized_and_small_writes_coalesce() {
    let mut net = Net::new(UtpConfig::default(), 3);
    let (a_id, b_id) = net.handshake();
    let mark = net.log.len();
    let mut got = Vec::new();
    // One small write goes at once (nothing in flight); the next ones wait for its ack and then
    // travel together.
    net.a.write(a_id, b"first").unwrap();
    net.transmit(&mut clean);
    for _ in 0..10 {
        net.a.write(a_id, b"0123456789").unwrap();
    }
    net.run_until(Duration::from_secs(5), &mut clean, |n| {
        pull(&mut n.b, b_id, &mut got);
        got.len() == 105
    });
    let sizes: Vec<usize> = net.log[mark..]
        .iter()
        .filter(|l| l.0 == Dir::AtoB && l.1.ty == PacketType::Data)
        .map(|l| l.2)
        .collect();
    assert_eq!(sizes, vec![5, 100]);
    // A bulk write goes out in 1,400-byte packets.
    let bulk = data(14_000, 3);
    let mark = net.log.len();
    net.a.write(a_id, &bulk).unwrap();
    let mut got = Vec::new();
    net.run_until(Duration::from_secs(5), &mut clean, |n| {
        pull(&mut n.b, b_id, &mut got);
        got.len() == bulk.len()
    });
    assert_eq!(got, bulk);
    let sizes: Vec<usize> = net.log[mark..]
        .iter()
        .filter(|l| l.0 == Dir::AtoB && l.1.ty == PacketType::Data)
        .map(|l| l.2)
        .collect();
    assert_eq!(sizes, vec![1400; 10]);
}

#[test]
fn out_of_order_delivery_uses_selective_acks() {
    let mut net = Net::new(UtpConfig::default(), 4);
    let (a_id, b_id) = net.handshake();
    let payload = data(1400 * 8, 11);
    // Data packets arrive in reverse order of sending: the first after 80 ms, the eighth after 10.
    let mut k = 0u64;
    let mut fate = |dir: Dir, p: &Packet<'_>| {
        if dir == Dir::AtoB && p.header.ty == PacketType::Data {
            k += 1;
            Fate::Deliver(Duration::from_millis(90 - 10 * k.min(8)))
        } else {
            Fate::Deliver(LATENCY)
        }
    };
    net.a.write(a_id, &payload).unwrap();
    let mut got = Vec::new();
    net.run_until(Duration::from_secs(10), &mut fate, |n| {
        pull(&mut n.b, b_id, &mut got);
        got.len() >= payload.len()
    });
    assert_eq!(&got[..payload.len()], &payload[..]);
    let sacks = net
        .log
        .iter()
        .filter(|l| l.0 == Dir::BtoA && l.1.ty == PacketType::State)
        .count();
    assert!(sacks > 0);
    assert_eq!(net.a.conn_stats(a_id).unwrap().counters.timeouts, 0);
}

#[test]
fn selective_ack_bits_name_the_packets_received() {
    // Deliver packets 1, 3 and 4 of a burst and hold back 0 and 2: B's ack must say ack_nr = (before
    // 0) with bits for 1, 3 and 4.
    let mut net = Net::new(UtpConfig::default(), 5);
    let (a_id, _b_id) = net.handshake();
    let mut cfg_cwnd = net.a.conn_stats(a_id).unwrap().cwnd;
    assert!(cfg_cwnd >= 2800);
    // Grow the window with a first exchange so that five packets go in one burst.
    let warm = data(30_000, 1);
    let mut w = 0;
    let mut got = Vec::new();
    net.run_until(Duration::from_secs(5), &mut clean, |n| {
        push(&mut n.a, a_id, &warm, &mut w);
        pull(&mut n.b, _b_id, &mut got);
        got.len() == warm.len()
    });
    cfg_cwnd = net.a.conn_stats(a_id).unwrap().cwnd;
    assert!(cfg_cwnd >= 7000, "cwnd {cfg_cwnd}");
    let burst = data(1400 * 5, 2);
    net.a.write(a_id, &burst).unwrap();
    let mut first_seq = None;
    let mark = net.log.len();
    net.transmit(&mut |dir, p| {
        if dir == Dir::AtoB && p.header.ty == PacketType::Data {
            let first = *first_seq.get_or_insert(p.header.seq_nr);
            let i = p.header.seq_nr.wrapping_sub(first);
            if i == 0 || i == 2 {
                return Fate::Drop;
            }
        }
        Fate::Deliver(LATENCY)
    });
    let first = first_seq.unwrap();
    let sent: Vec<_> = net.log[mark..]
        .iter()
        .filter(|l| l.1.ty == PacketType::Data)
        .collect();
    assert_eq!(sent.len(), 5);
    let mark = net.log.len();
    net.step(&mut clean);
    net.transmit(&mut clean);
    let acks: Vec<_> = net.log[mark..]
        .iter()
        .filter(|l| l.0 == Dir::BtoA)
        .map(|l| l.1)
        .collect();
    assert_eq!(acks.len(), 1, "one ack for the batch: {acks:?}");
    assert_eq!(acks[0].ack_nr, first.wrapping_sub(1));
    // Re-parse the datagram B sent to read its bitmask.
    let mut buf = Vec::new();
    let h = acks[0];
    let _ = h;
    let last = net.air.iter().rfind(|d| d.dir == Dir::BtoA).unwrap();
    buf.extend_from_slice(&last.bytes);
    let p = Packet::parse(&buf).unwrap();
    let sack = p.sack.expect("a selective ack");
    // Bit i is packet ack_nr + 2 + i: packets 1, 3, 4 of the burst are bits 0, 2, 3.
    assert_eq!(sack.as_bytes(), &[0b1101, 0, 0, 0]);
}

#[test]
fn lost_data_is_recovered_by_fast_retransmit() {
    let mut net = Net::new(UtpConfig::default(), 6);
    let (a_id, b_id) = net.handshake();
    let payload = data(200_000, 5);
    let mut n_data = 0;
    let mut fate = |dir: Dir, p: &Packet<'_>| {
        if dir == Dir::AtoB && p.header.ty == PacketType::Data {
            n_data += 1;
            if n_data == 20 {
                return Fate::Drop;
            }
        }
        Fate::Deliver(LATENCY)
    };
    let start = net.now;
    let (got, eof) = transfer(
        &mut net,
        a_id,
        b_id,
        &payload,
        Duration::from_secs(60),
        &mut fate,
    );
    assert!(eof);
    assert_eq!(got, payload);
    let c = net.a.conn_stats(a_id).unwrap().counters;
    assert!(c.fast_resends >= 1, "{c:?}");
    assert_eq!(c.timeouts, 0, "{c:?}");
    // Recovered within a few round trips, not a timeout.
    assert!(net.now - start < Duration::from_secs(5));
}

#[test]
fn lost_acks_and_lost_tail_are_recovered_by_timeout() {
    let mut net = Net::new(UtpConfig::default(), 7);
    let (a_id, b_id) = net.handshake();
    let payload = data(5_000, 9);
    // Every ack from B is lost for the first 1.2 s.
    let t0 = net.now;
    let now_ref = std::cell::Cell::new(t0);
    let mut fate = |dir: Dir, _p: &Packet<'_>| {
        if dir == Dir::BtoA && now_ref.get() - t0 < Duration::from_millis(1200) {
            Fate::Drop
        } else {
            Fate::Deliver(LATENCY)
        }
    };
    let mut written = 0;
    let mut got = Vec::new();
    net.run_until(Duration::from_secs(30), &mut fate, |n| {
        now_ref.set(n.now);
        push(&mut n.a, a_id, &payload, &mut written);
        pull(&mut n.b, b_id, &mut got);
        n.a.conn_stats(a_id).unwrap().send_buffered == 0
    });
    assert_eq!(got, payload);
    let c = net.a.conn_stats(a_id).unwrap().counters;
    assert!(c.timeouts >= 1 && c.timeout_resends >= 1, "{c:?}");
    let b = net.b.conn_stats(b_id).unwrap().counters;
    assert!(b.duplicates >= 1, "{b:?}");
}

#[test]
fn duplicates_and_reordering_change_nothing() {
    let mut net = Net::new(UtpConfig::default(), 8);
    let (a_id, b_id) = net.handshake();
    let payload = data(300_000, 13);
    let mut k = 0u64;
    let mut fate = |_dir: Dir, _p: &Packet<'_>| {
        k += 1;
        Fate::Twice(
            Duration::from_millis(5 + k * 7 % 40),
            Duration::from_millis(5 + k * 13 % 60),
        )
    };
    let (got, eof) = transfer(
        &mut net,
        a_id,
        b_id,
        &payload,
        Duration::from_secs(60),
        &mut fate,
    );
    assert!(eof);
    assert_eq!(got, payload);
    assert!(net.b.conn_stats(b_id).unwrap().counters.duplicates > 0);
}

#[test]
fn sequence_numbers_wrap_around() {
    // Find seeds whose initial sequence numbers sit just below the wrap, for both sides.
    let mut found = None;
    for seed in 0..200_000u64 {
        let mut a = UtpSocket::new(UtpConfig::default(), seeded(seed));
        a.connect(Instant::ZERO, B).unwrap();
        let mut buf = Vec::new();
        a.poll_transmit(Instant::ZERO, &mut buf).unwrap();
        let seq = Packet::parse(&buf).unwrap().header.seq_nr;
        if seq >= 0xffd0 {
            found = Some(seed);
            break;
        }
    }
    let seed = found.expect("a seed near the wrap");
    let mut net = Net::new(UtpConfig::default(), seed);
    let (a_id, b_id) = net.handshake();
    let payload = data(150 * 1400, 21);
    let mut n = 0;
    let mut dropped = std::collections::HashSet::new();
    // Lose a few packets (once each) on both sides of the wrap: sacks and resends cross it.
    let mut fate = |dir: Dir, p: &Packet<'_>| {
        if dir == Dir::AtoB && p.header.ty == PacketType::Data {
            n += 1;
            let s = p.header.seq_nr;
            if (n % 17 == 0 || s == 0 || s == 0xffff) && dropped.insert(s) {
                return Fate::Drop;
            }
        }
        Fate::Deliver(LATENCY)
    };
    let (got, eof) = transfer(
        &mut net,
        a_id,
        b_id,
        &payload,
        Duration::from_secs(120),
        &mut fate,
    );
    assert!(eof);
    assert_eq!(got, payload);
    let seqs: Vec<u16> = net
        .log
        .iter()
        .filter(|l| l.0 == Dir::AtoB && l.1.ty == PacketType::Data)
        .map(|l| l.1.seq_nr)
        .collect();
    assert!(seqs.contains(&0xffff) && seqs.contains(&0) && seqs.contains(&1));
}

#[test]
fn reset_closes_the_peer() {
    let mut net = Net::new(UtpConfig::default(), 9);
    let (a_id, b_id) = net.handshake();
    net.a.write(a_id, b"hello").unwrap();
    net.run_until(Duration::from_secs(1), &mut clean, |n| {
        n.b_events.contains(&Event::Readable(b_id))
    });
    net.a.abort(net.now, a_id);
    assert_eq!(net.a.connections(), 0);
    net.run_until(Duration::from_secs(1), &mut clean, |n| {
        closed(&n.b_events, b_id).is_some()
    });
    assert_eq!(closed(&net.b_events, b_id), Some(CloseReason::Reset));
    // Received bytes stay readable after the reset; then the error.
    let mut buf = [0u8; 16];
    assert_eq!(net.b.read(b_id, &mut buf), Ok(5));
    assert_eq!(
        net.b.read(b_id, &mut buf),
        Err(StreamError::Closed(CloseReason::Reset))
    );
    assert_eq!(
        net.b.write(b_id, b"x"),
        Err(StreamError::Closed(CloseReason::Reset))
    );
}

#[test]
fn packets_for_unknown_connections_get_rate_limited_resets() {
    let cfg = UtpConfig::default();
    let (rate, burst) = (cfg.reset_rate, cfg.reset_burst);
    let mut s = UtpSocket::new(cfg, seeded(10));
    let mut buf = Vec::new();
    let mut pkt = Vec::new();
    let mut resets = 0u64;
    // 10,000 data packets for nothing, over 10 s.
    for i in 0..10_000u64 {
        let now = Instant::from_millis(i);
        pkt.clear();
        let h = Header {
            ty: PacketType::Data,
            connection_id: i as u16,
            timestamp_us: 0,
            timestamp_diff_us: 0,
            wnd_size: 0,
            seq_nr: i as u16,
            ack_nr: 0,
        };
        write_header(&h, None, &mut pkt);
        assert!(s.handle_datagram(now, A, &pkt));
        while let Some(to) = s.poll_transmit(now, &mut buf) {
            assert_eq!(to, A);
            let p = Packet::parse(&buf).unwrap();
            assert_eq!(p.header.ty, PacketType::Reset);
            assert_eq!(p.header.ack_nr, i as u16);
            resets += 1;
        }
    }
    assert!(
        resets <= u64::from(burst) + 10 * u64::from(rate) + 1,
        "{resets}"
    );
    assert!(resets >= 10 * u64::from(rate));
    assert_eq!(s.connections(), 0);
    assert_eq!(s.stats().unknown, 10_000);
    // A RESET for nothing is never answered.
    pkt.clear();
    write_header(
        &Header {
            ty: PacketType::Reset,
            connection_id: 1,
            timestamp_us: 0,
            timestamp_diff_us: 0,
            wnd_size: 0,
            seq_nr: 0,
            ack_nr: 0,
        },
        None,
        &mut pkt,
    );
    let now = Instant::from_secs(100);
    s.handle_datagram(now, A, &pkt);
    assert_eq!(s.poll_transmit(now, &mut buf), None);
    // Garbage is not uTP.
    assert!(!s.handle_datagram(now, A, b"d1:y1:qe"));
}

#[test]
fn syn_flood_costs_bounded_memory() {
    let cfg = UtpConfig::default();
    let max_half_open = cfg.max_half_open;
    let half_open_timeout = cfg.half_open_timeout;
    let mut s = UtpSocket::new(cfg, seeded(11));
    let mut buf = Vec::new();
    let mut pkt = Vec::new();
    for i in 0..20_000u32 {
        let now = Instant::from_millis(u64::from(i / 10));
        let from = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1000 + (i % 7) as u16));
        pkt.clear();
        write_header(
            &Header {
                ty: PacketType::Syn,
                connection_id: i as u16,
                timestamp_us: 0,
                timestamp_diff_us: 0,
                wnd_size: 1 << 20,
                seq_nr: 1,
                ack_nr: 0,
            },
            None,
            &mut pkt,
        );
        s.handle_datagram(now, from, &pkt);
        while s.poll_transmit(now, &mut buf).is_some() {}
        if let Some(t) = s.poll_timeout() {
            if t <= now {
                s.handle_timeout(now);
            }
        }
        assert!(s.connections() <= max_half_open);
    }
    assert!(s.stats().syn_dropped > 0);
    assert_eq!(
        s.poll_event(),
        None,
        "half-open connections are not announced"
    );
    // They all expire.
    let later = Instant::from_secs(2) + half_open_timeout + Duration::from_secs(1);
    s.handle_timeout(later);
    assert_eq!(s.connections(), 0);
    assert_eq!(s.poll_event(), None);
}

#[test]
fn connect_to_nobody_times_out_after_syn_retransmits() {
    let cfg = UtpConfig::default();
    let mut net = Net::new(cfg.clone(), 12);
    let a_id = net.a.connect(Instant::ZERO, B).unwrap();
    let mut drop_all = |_: Dir, _: &Packet<'_>| Fate::Drop;
    net.run_until(Duration::from_secs(60), &mut drop_all, |n| {
        closed(&n.a_events, a_id).is_some()
    });
    assert_eq!(
        closed(&net.a_events, a_id),
        Some(CloseReason::ConnectTimedOut)
    );
    let syns = net.log.iter().filter(|l| l.1.ty == PacketType::Syn).count();
    assert_eq!(syns, 1 + usize::from(cfg.syn_retransmits));
    // 1 s, then 2 s, then 4 s: the SYN timeouts double.
    assert_eq!(net.now, Instant::from_secs(7));
}

#[test]
fn silent_peer_times_out_after_retransmission_limit() {
    let cfg = UtpConfig::default();
    let mut net = Net::new(cfg.clone(), 13);
    let (a_id, _b_id) = net.handshake();
    let t0 = net.now;
    net.a.write(a_id, b"anyone there?").unwrap();
    let mut drop_all = |_: Dir, _: &Packet<'_>| Fate::Drop;
    net.run_until(Duration::from_secs(300), &mut drop_all, |n| {
        closed(&n.a_events, a_id).is_some()
    });
    assert_eq!(closed(&net.a_events, a_id), Some(CloseReason::TimedOut));
    let sends = net
        .log
        .iter()
        .filter(|l| l.0 == Dir::AtoB && l.1.ty == PacketType::Data)
        .count();
    assert_eq!(sends, 1 + usize::from(cfg.max_retransmits));
    // RTO from a 20 ms RTT is the 500 ms floor, doubling: 0.5 * (2^7 - 1) s.
    assert_eq!(net.now - t0, Duration::from_millis(500 * 127));
}

#[test]
fn idle_peer_that_vanishes_times_out() {
    let cfg = UtpConfig::default();
    let mut net = Net::new(cfg.clone(), 14);
    let (a_id, b_id) = net.handshake();
    // Idle but alive: keep-alives keep both ends up well past the idle timeout.
    net.run_until(cfg.idle_timeout * 2, &mut clean, |_| false);
    assert!(closed(&net.a_events, a_id).is_none() && closed(&net.b_events, b_id).is_none());
    // Now B's side of the network goes dark.
    let t0 = net.now;
    let mut dark = |dir: Dir, _: &Packet<'_>| {
        if dir == Dir::BtoA {
            Fate::Drop
        } else {
            Fate::Deliver(LATENCY)
        }
    };
    net.run_until(cfg.idle_timeout * 2, &mut dark, |n| {
        closed(&n.a_events, a_id).is_some()
    });
    assert_eq!(closed(&net.a_events, a_id), Some(CloseReason::TimedOut));
    let waited = net.now - t0;
    assert!(waited <= cfg.idle_timeout && waited > cfg.idle_timeout - cfg.keepalive_interval);
}

#[test]
fn receive_window_gives_backpressure() {
    let cfg = UtpConfig {
        send_buffer: 64 * 1024,
        recv_buffer: 32 * 1024,
        ..UtpConfig::default()
    };
    let mut net = Net::new(cfg.clone(), 15);
    let (a_id, b_id) = net.handshake();
    let payload = data(400_000, 17);
    let mut written = 0;
    // B does not read: A's writes stop at its send buffer, B buffers at most its window.
    net.run_until(Duration::from_secs(20), &mut clean, |n| {
        push(&mut n.a, a_id, &payload, &mut written);
        false
    });
    let b_buf = net.b.conn_stats(b_id).unwrap().recv_buffered;
    assert_eq!(written, cfg.send_buffer + b_buf);
    assert!(
        b_buf <= cfg.recv_buffer && b_buf > cfg.recv_buffer - 1400,
        "{b_buf}"
    );
    assert!(!net.a_events.contains(&Event::Writable(a_id)));
    // B reads: the window opens, the rest flows, A hears it may write again.
    let mut got = Vec::new();
    let mut shut = false;
    let eof = net.run_until(Duration::from_secs(60), &mut clean, |n| {
        push(&mut n.a, a_id, &payload, &mut written);
        if written == payload.len() && !shut {
            n.a.close(a_id);
            shut = true;
        }
        pull(&mut n.b, b_id, &mut got)
    });
    assert!(eof);
    assert_eq!(got, payload);
    assert!(net.a_events.contains(&Event::Writable(a_id)));
}

#[test]
fn ledbat_keeps_the_bottleneck_queue_near_the_target() {
    // 1 MB/s bottleneck, 25 ms each way, a deep (2 s) buffer: TCP would fill it; LEDBAT must hold
    // the queue near 100 ms while still using the link.
    let rate = 1_000_000u64;
    let fwd = LinkConfig {
        latency: Duration::from_millis(25),
        rate: Some(rate),
        queue_limit: Duration::from_secs(2),
        ..LinkConfig::loopback()
    };
    let back = LinkConfig {
        latency: Duration::from_millis(25),
        ..LinkConfig::loopback()
    };
    let r = run_transfer(
        &UtpConfig::default(),
        fwd,
        back,
        20_000_000,
        1,
        Duration::from_secs(120),
    );
    assert!(r.exact, "{r:?}");
    let goodput = r.throughput();
    let q = r.mean_queue_delay();
    eprintln!(
        "ledbat: goodput {:.0} KB/s of {} KB/s, mean queue {:?}, max queue {:?}",
        goodput / 1e3,
        rate / 1000,
        q,
        r.forward.max_queue_delay
    );
    assert!(goodput > 0.8 * rate as f64, "{goodput}");
    assert!(
        q > Duration::from_millis(40) && q < Duration::from_millis(160),
        "{q:?}"
    );
    assert!(r.forward.max_queue_delay < Duration::from_millis(250));
    assert_eq!(r.forward.queue_drops, 0);
}

#[test]
fn lossy_links_deliver_exactly_and_report_figures() {
    // 20 ms each way, 2 MB/s bottleneck with a 300 ms buffer; 1% and 5% random loss both ways.
    for (loss_ppm, min_share) in [(10_000u32, 0.15), (50_000, 0.02)] {
        let link = LinkConfig {
            latency: Duration::from_millis(20),
            loss_ppm,
            rate: Some(2_000_000),
            queue_limit: Duration::from_millis(300),
            ..LinkConfig::loopback()
        };
        let r = run_transfer(
            &UtpConfig::default(),
            link.clone(),
            link,
            8_000_000,
            loss_ppm.into(),
            Duration::from_secs(300),
        );
        eprintln!(
            "loss {:.0}%: goodput {:.0} KB/s of 2000, mean queue {:?}, max queue {:?}, \
             resends fast {} timeout {}, timeouts {}",
            f64::from(loss_ppm) / 1e4,
            r.throughput() / 1e3,
            r.mean_queue_delay(),
            r.forward.max_queue_delay,
            r.sender.fast_resends,
            r.sender.timeout_resends,
            r.sender.timeouts
        );
        assert!(r.exact, "{r:?}");
        assert_eq!(
            r.closed,
            (Some(CloseReason::Finished), Some(CloseReason::Finished))
        );
        assert!(r.throughput() > min_share * 2e6, "{}", r.throughput());
    }
}

/// A network whose schedule comes from the property test: per datagram a delay (reordering), a
/// duplicate flag and a drop flag, but no datagram "key" (type, direction, seq or ack number) is
/// dropped more than `max_run` times in a row. `longest` records the longest drop run it made.
fn adversarial(
    schedule: Vec<(u8, bool, bool)>,
    max_run: u8,
    longest: std::rc::Rc<std::cell::Cell<u8>>,
) -> impl FnMut(Dir, &Packet<'_>) -> Fate + 'static {
    let mut i = 0usize;
    let mut runs: std::collections::HashMap<(Dir, u8, u16), u8> = Default::default();
    move |dir, p| {
        let (delay, dup, drop) = schedule[i % schedule.len()];
        i += 1;
        let h = p.header;
        // Acks are told apart by what they acknowledge; everything else by its sequence number.
        let key = (
            dir,
            h.ty as u8,
            if h.ty == PacketType::State {
                h.ack_nr
            } else {
                h.seq_nr
            },
        );
        let run = runs.entry(key).or_insert(0);
        if drop && *run < max_run {
            *run += 1;
            longest.set(longest.get().max(*run));
            return Fate::Drop;
        }
        *run = 0;
        let d = Duration::from_millis(u64::from(delay));
        if dup {
            Fate::Twice(d, d + Duration::from_millis(u64::from(delay / 2) + 1))
        } else {
            Fate::Deliver(d)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Under any schedule of delay (so reordering), duplication and loss in which no packet is lost
    /// more than `max_run` times in a row, the stream arrives byte-exact, or the connection fails
    /// with a timeout and the schedule really did exceed the retransmission limit.
    ///
    /// The bound: a packet is acknowledged once one of its copies and an ack it triggers both get
    /// through. The copy gets through after at most `max_run` drops; each delivered copy whose ack
    /// is dropped uses up one drop of the ack's run, so at most `(max_run + 1)^2` transmissions are
    /// needed. With a limit of 15 retransmissions (16 transmissions) `max_run <= 3` must succeed.
    /// The idle and half-open timeouts are raised so that only the retransmission limit decides.
    #[test]
    fn any_survivable_schedule_delivers_exactly(
        schedule in proptest::collection::vec((1u8..120, proptest::bool::weighted(0.1), proptest::bool::weighted(0.3)), 1..64),
        max_run in 0u8..5,
        len in 0usize..60_000,
        seed in 0u64..1000,
    ) {
        let cfg = UtpConfig {
            max_retransmits: 15,
            syn_retransmits: 15,
            idle_timeout: Duration::from_secs(24 * 3600),
            half_open_timeout: Duration::from_secs(24 * 3600),
            ..UtpConfig::default()
        };
        let limit = cfg.max_retransmits;
        let mut net = Net::new(cfg, seed);
        let payload = data(len, seed);
        let longest = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut fate = adversarial(schedule, max_run, longest.clone());
        let a_id = net.a.connect(Instant::ZERO, B).unwrap();
        let mut written = 0;
        let mut got = Vec::new();
        let mut eof = false;
        let mut shut = false;
        let mut b_id = None;
        net.run_until(Duration::from_secs(100_000), &mut fate, |n| {
            push(&mut n.a, a_id, &payload, &mut written);
            if written == payload.len() && !shut {
                n.a.close(a_id);
                shut = true;
            }
            if b_id.is_none() {
                b_id = n.accepted();
            }
            if let Some(b) = b_id {
                if !eof && pull(&mut n.b, b, &mut got) {
                    eof = true;
                    n.b.close(b);
                }
            }
            closed(&n.a_events, a_id).is_some()
                && b_id.is_none_or(|b| closed(&n.b_events, b).is_some())
        });
        let a_end = closed(&net.a_events, a_id);
        let transmissions = |run: u8| (u16::from(run) + 1).pow(2);
        if transmissions(max_run) <= u16::from(limit) + 1 {
            prop_assert!(eof, "stream not finished: {a_end:?}");
            prop_assert_eq!(&got, &payload);
            prop_assert_eq!(a_end, Some(CloseReason::Finished));
        } else if a_end != Some(CloseReason::Finished) {
            prop_assert!(matches!(a_end, Some(CloseReason::TimedOut) | Some(CloseReason::ConnectTimedOut)), "{a_end:?}");
            prop_assert!(
                transmissions(longest.get()) > u16::from(limit) + 1,
                "failed after at most {} losses in a row", longest.get()
            );
            // Whatever arrived is a prefix of the stream.
            prop_assert_eq!(&got[..], &payload[..got.len()]);
        } else {
            prop_assert_eq!(&got, &payload);
        }
    }
}

#[test]
fn lost_fins_are_retransmitted() {
    let mut net = Net::new(UtpConfig::default(), 16);
    let (a_id, b_id) = net.handshake();
    let mut dropped = 0;
    // The first two FINs each way are lost, and so is B's first ack of A's FIN.
    let mut fate = |_dir: Dir, p: &Packet<'_>| {
        if p.header.ty == PacketType::Fin && dropped < 4 {
            dropped += 1;
            return Fate::Drop;
        }
        Fate::Deliver(LATENCY)
    };
    net.a.write(a_id, b"ping").unwrap();
    net.a.close(a_id);
    let mut got = Vec::new();
    let mut shut = false;
    net.run_until(Duration::from_secs(60), &mut fate, |n| {
        if pull(&mut n.b, b_id, &mut got) && !shut {
            n.b.close(b_id);
            shut = true;
        }
        closed(&n.a_events, a_id).is_some() && closed(&n.b_events, b_id).is_some()
    });
    assert_eq!(got, b"ping");
    assert_eq!(closed(&net.a_events, a_id), Some(CloseReason::Finished));
    assert_eq!(closed(&net.b_events, b_id), Some(CloseReason::Finished));
    assert_eq!(dropped, 4);
}

#[test]
fn peer_that_forgot_the_connection_resets_it() {
    let mut net = Net::new(UtpConfig::default(), 17);
    let (a_id, _b_id) = net.handshake();
    // B restarts: a fresh socket that knows nothing of the connection.
    net.b = UtpSocket::new(UtpConfig::default(), seeded(99));
    net.a.write(a_id, b"still there?").unwrap();
    net.run_until(Duration::from_secs(5), &mut clean, |n| {
        closed(&n.a_events, a_id).is_some()
    });
    assert_eq!(closed(&net.a_events, a_id), Some(CloseReason::Reset));
    assert_eq!(net.b.stats().resets_sent, 1);
    assert_eq!(net.b.connections(), 0);
    // Writing to a closed connection fails; so does closing the write side twice.
    assert_eq!(
        net.a.write(a_id, b"x"),
        Err(StreamError::Closed(CloseReason::Reset))
    );
}

#[test]
fn write_after_close_is_refused() {
    let mut net = Net::new(UtpConfig::default(), 18);
    let (a_id, _b_id) = net.handshake();
    net.a.close(a_id);
    assert_eq!(net.a.write(a_id, b"late"), Err(StreamError::WriteClosed));
    assert_eq!(
        net.a.write(ConnId(12345), b"x"),
        Err(StreamError::UnknownConnection)
    );
}

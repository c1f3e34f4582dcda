//! One uTP connection: the send side (buffer, packets in flight, retransmission, LEDBAT), the receive
//! side (in-order buffer, reorder buffer, selective acks, window) and the connection's life cycle.
//!
//! Send-side memory: every byte the application wrote and the peer has not acknowledged lives once in
//! `send_buf`, indexed by stream offset; a packet in flight is only (offset, length, timers), so
//! retransmitting copies from `send_buf` and nothing is allocated per packet. Receive side: in-order
//! bytes go straight into `recv_buf`; out-of-order payloads wait in `ooo` in buffers recycled through a
//! small pool.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use super::packet::MAX_SACK_BYTES;
use super::packet::{seq_le, seq_lt, write_header, Header, Packet, PacketType, SelectiveAck};
use super::{CloseReason, StreamError, UtpConfig};
use crate::time::Instant;

/// Most packets in flight at once (well below half the 16-bit sequence space).
const MAX_FLIGHT_PACKETS: usize = 2048;
/// Packets acknowledged past a hole that make the hole count as lost (and duplicate acks likewise).
const DUP_ACK_LIMIT: usize = 3;
/// Recycled out-of-order payload buffers kept per connection.
const POOL_MAX: usize = 64;
/// Largest delay sample believed, in microseconds (anything above is a clock jump).
const MAX_DELAY_US: u64 = 10_000_000;
/// Base-delay history: minimum per minute, over this many minutes.
const BASE_DELAY_MINUTES: usize = 2;

/// Connection life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// We sent a SYN and wait for its ack.
    SynSent,
    /// We acked a SYN and wait for the initiator to prove its address.
    SynReceived,
    /// Data flows.
    Connected,
    /// Finished or failed; lingers to ack retransmissions, then is reaped.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Syn,
    Data,
    Fin,
}

/// One packet sent and not yet cumulatively acknowledged.
#[derive(Debug, Clone, Copy)]
struct Sent {
    kind: Kind,
    offset: u64,
    len: u16,
    sent_at: Instant,
    /// Times sent (Karn: an RTT sample only from a packet sent once).
    transmissions: u8,
    /// Selectively acknowledged.
    acked: bool,
    /// Counted in `bytes_in_flight`.
    in_flight: bool,
    /// Must be sent again.
    resend: bool,
    /// Resend at once, even past the window (fast retransmit).
    fast: bool,
}

/// Event flags a connection raises for the socket to report.
pub(crate) mod ev {
    pub const CONNECTED: u8 = 1;
    pub const ACCEPTED: u8 = 2;
    pub const READABLE: u8 = 4;
    pub const WRITABLE: u8 = 8;
    pub const CLOSED: u8 = 16;
}

/// Per-connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets sent, acks and retransmissions included.
    pub packets_sent: u64,
    /// Packets received and accepted by this connection.
    pub packets_received: u64,
    /// Packets resent after a timeout.
    pub timeout_resends: u64,
    /// Packets resent by fast retransmit.
    pub fast_resends: u64,
    /// Retransmission timeouts that fired.
    pub timeouts: u64,
    /// Duplicate data packets received.
    pub duplicates: u64,
    /// Data packets dropped for lack of buffer space or out of the reorder range.
    pub dropped: u64,
}

/// The minimum one-way delay seen, per minute, over the last minutes: LEDBAT's base delay.
#[derive(Debug, Clone)]
struct BaseDelay {
    minutes: [Option<u32>; BASE_DELAY_MINUTES],
    current: usize,
    minute_start: Instant,
}

impl BaseDelay {
    fn new(now: Instant) -> BaseDelay {
        BaseDelay {
            minutes: [None; BASE_DELAY_MINUTES],
            current: 0,
            minute_start: now,
        }
    }

    /// Records a `timestamp_difference` sample; returns the queueing delay it shows, in microseconds.
    fn sample(&mut self, now: Instant, s: u32) -> u64 {
        if now - self.minute_start >= Duration::from_secs(60) {
            self.current = (self.current + 1) % BASE_DELAY_MINUTES;
            self.minutes[self.current] = None;
            self.minute_start = now;
        }
        let cur = &mut self.minutes[self.current];
        // Wrapping comparison: the samples carry an arbitrary clock offset.
        if cur.is_none_or(|m| (s.wrapping_sub(m) as i32) < 0) {
            *cur = Some(s);
        }
        let base = self
            .minutes
            .iter()
            .flatten()
            .copied()
            .reduce(|a, b| if (b.wrapping_sub(a) as i32) < 0 { b } else { a })
            .unwrap_or(s);
        u64::from(s.wrapping_sub(base)).min(MAX_DELAY_US)
    }
}

/// The microsecond timestamp carried on the wire: the injected clock, truncated to 32 bits.
pub(crate) fn micros(now: Instant) -> u32 {
    now.since_origin().as_micros() as u32
}

/// One uTP connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub remote: SocketAddr,
    pub recv_id: u16,
    pub send_id: u16,
    pub state: State,
    /// Announced to the application (initiators at once, acceptors once confirmed).
    pub announced: bool,
    pub closed_at: Option<Instant>,
    created: Instant,
    last_recv: Instant,
    last_send: Instant,

    // Send side.
    seq_nr: u16,
    acked_seq: u16,
    send_buf: VecDeque<u8>,
    send_base: u64,
    sent_off: u64,
    flight: VecDeque<Sent>,
    resend_pending: usize,
    bytes_in_flight: usize,
    /// Packets counted in flight (SYN and FIN carry no bytes but still need their timer).
    packets_out: usize,
    write_shut: bool,
    fin_acked: bool,
    want_writable: bool,
    peer_wnd: usize,
    cwnd: usize,
    ssthresh: usize,
    slow_start: bool,
    loss_cut_seq: u16,
    dup_acks: usize,
    rtt_us: Option<(u64, u64)>,
    backoff: u32,
    /// Retransmission timeouts in a row without the cumulative ack moving; the limit applies to it.
    timeouts_in_row: u8,
    rto_at: Option<Instant>,
    probe: bool,
    delay: BaseDelay,
    last_delay_us: u64,

    // Receive side.
    ack_nr: u16,
    recv_buf: VecDeque<u8>,
    ooo: VecDeque<Option<Vec<u8>>>,
    ooo_bytes: usize,
    pool: Vec<Vec<u8>>,
    eof_seq: Option<u16>,
    read_eof: bool,
    ack_pending: bool,
    reply_micro: u32,
    advertised: usize,

    events: u8,
    pub counters: Counters,
}

impl Conn {
    fn blank(
        now: Instant,
        remote: SocketAddr,
        recv_id: u16,
        send_id: u16,
        cfg: &UtpConfig,
    ) -> Conn {
        Conn {
            remote,
            recv_id,
            send_id,
            state: State::SynSent,
            announced: false,
            closed_at: None,
            created: now,
            last_recv: now,
            last_send: now,
            seq_nr: 0,
            acked_seq: 0,
            send_buf: VecDeque::new(),
            send_base: 0,
            sent_off: 0,
            flight: VecDeque::new(),
            resend_pending: 0,
            bytes_in_flight: 0,
            packets_out: 0,
            write_shut: false,
            fin_acked: false,
            want_writable: false,
            peer_wnd: cfg.max_payload,
            cwnd: cfg.initial_cwnd.max(cfg.max_payload),
            ssthresh: cfg.max_cwnd,
            slow_start: true,
            loss_cut_seq: 0,
            dup_acks: 0,
            rtt_us: None,
            backoff: 0,
            timeouts_in_row: 0,
            rto_at: None,
            probe: false,
            delay: BaseDelay::new(now),
            last_delay_us: 0,
            ack_nr: 0,
            recv_buf: VecDeque::new(),
            ooo: VecDeque::new(),
            ooo_bytes: 0,
            pool: Vec::new(),
            eof_seq: None,
            read_eof: false,
            ack_pending: false,
            reply_micro: 0,
            advertised: cfg.recv_buffer,
            events: 0,
            counters: Counters::default(),
        }
    }

    /// An outgoing connection; its SYN is queued. `recv_id` is the id we receive on.
    pub fn connect(
        now: Instant,
        remote: SocketAddr,
        recv_id: u16,
        seq_nr: u16,
        cfg: &UtpConfig,
    ) -> Conn {
        let mut c = Conn::blank(now, remote, recv_id, recv_id.wrapping_add(1), cfg);
        c.announced = true;
        c.seq_nr = seq_nr;
        c.acked_seq = seq_nr.wrapping_sub(1);
        c.loss_cut_seq = seq_nr;
        c.push_flight(Kind::Syn, 0, 0, now);
        c
    }

    /// An incoming connection from a SYN; its ack is queued.
    pub fn accept(
        now: Instant,
        remote: SocketAddr,
        syn: &Header,
        seq_nr: u16,
        cfg: &UtpConfig,
    ) -> Conn {
        let mut c = Conn::blank(
            now,
            remote,
            syn.connection_id.wrapping_add(1),
            syn.connection_id,
            cfg,
        );
        c.state = State::SynReceived;
        c.seq_nr = seq_nr;
        c.acked_seq = seq_nr.wrapping_sub(1);
        c.loss_cut_seq = seq_nr;
        c.ack_nr = syn.seq_nr;
        c.peer_wnd = syn.wnd_size as usize;
        c.reply_micro = micros(now).wrapping_sub(syn.timestamp_us);
        c.ack_pending = true;
        c
    }

    pub fn take_events(&mut self) -> u8 {
        std::mem::take(&mut self.events)
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    fn rto(&self, cfg: &UtpConfig) -> Duration {
        let base = match self.rtt_us {
            None => cfg.initial_rto,
            Some((rtt, var)) => Duration::from_micros(rtt + 4 * var).max(cfg.min_rto),
        };
        base.saturating_mul(1u32 << self.backoff.min(16))
            .min(cfg.max_rto)
    }

    fn recv_free(&self, cfg: &UtpConfig) -> usize {
        cfg.recv_buffer
            .saturating_sub(self.recv_buf.len() + self.ooo_bytes)
    }

    fn close(&mut self, now: Instant, reason: CloseReason) {
        if self.is_closed() {
            return;
        }
        self.state = State::Closed(reason);
        self.closed_at = Some(now);
        self.rto_at = None;
        self.events |= ev::CLOSED;
        if !self.recv_buf.is_empty() || self.read_eof {
            self.events |= ev::READABLE;
        }
    }

    // ------------------------------------------------------------------ application side

    /// Queues bytes to send; returns how many fit in the send buffer.
    pub fn write(&mut self, data: &[u8], cfg: &UtpConfig) -> Result<usize, StreamError> {
        match self.state {
            State::Closed(r) => return Err(StreamError::Closed(r)),
            _ if self.write_shut => return Err(StreamError::WriteClosed),
            _ => {}
        }
        let room = cfg.send_buffer.saturating_sub(self.send_buf.len());
        let n = room.min(data.len());
        self.send_buf.extend(&data[..n]);
        if n < data.len() {
            self.want_writable = true;
        }
        Ok(n)
    }

    /// Reads in-order bytes; `Ok(0)` means the peer finished its stream and everything was read.
    pub fn read(&mut self, buf: &mut [u8], cfg: &UtpConfig) -> Result<usize, StreamError> {
        if !self.recv_buf.is_empty() {
            let n = buf.len().min(self.recv_buf.len());
            let (a, b) = self.recv_buf.as_slices();
            let from_a = n.min(a.len());
            buf[..from_a].copy_from_slice(&a[..from_a]);
            buf[from_a..n].copy_from_slice(&b[..n - from_a]);
            self.recv_buf.drain(..n);
            // Tell a sender stalled on our window that it opened.
            let free = self.recv_free(cfg);
            if !self.is_closed()
                && (free >= self.advertised + cfg.recv_buffer / 4
                    || (self.advertised < cfg.max_payload && free >= cfg.max_payload))
            {
                self.ack_pending = true;
            }
            return Ok(n);
        }
        if self.read_eof {
            return Ok(0);
        }
        match self.state {
            State::Closed(r) => Err(StreamError::Closed(r)),
            _ => Err(StreamError::WouldBlock),
        }
    }

    /// Closes the write side: a FIN follows the queued bytes.
    pub fn shutdown(&mut self) {
        self.write_shut = true;
    }

    /// Closes the connection at once (the application aborted it) and gives the RESET to send.
    pub fn abort(&mut self, now: Instant, cfg: &UtpConfig) -> Header {
        let h = self.header(PacketType::Reset, self.seq_nr, now, cfg);
        self.close(now, CloseReason::Aborted);
        self.events = 0;
        h
    }

    pub fn recv_buffered(&self) -> usize {
        self.recv_buf.len()
    }

    pub fn send_buffered(&self) -> usize {
        self.send_buf.len()
    }

    pub fn cwnd(&self) -> usize {
        self.cwnd
    }

    pub fn rtt(&self) -> Option<Duration> {
        self.rtt_us.map(|(r, _)| Duration::from_micros(r))
    }

    pub fn queue_delay(&self) -> Duration {
        Duration::from_micros(self.last_delay_us)
    }

    // ------------------------------------------------------------------ incoming packets

    /// Handles a packet routed to this connection.
    pub fn handle_packet(&mut self, now: Instant, p: &Packet<'_>, cfg: &UtpConfig) {
        let h = &p.header;
        if let State::Closed(reason) = self.state {
            // Lingering: keep acking a peer that missed our last ack.
            if reason == CloseReason::Finished && matches!(h.ty, PacketType::Data | PacketType::Fin)
            {
                self.reply_micro = micros(now).wrapping_sub(h.timestamp_us);
                self.ack_pending = true;
            }
            return;
        }
        match h.ty {
            PacketType::Syn => {
                // A retransmitted SYN: our ack was lost.
                if self.state != State::SynSent && h.seq_nr == self.ack_nr_for_syn() {
                    self.ack_pending = true;
                    self.last_recv = now;
                }
                return;
            }
            PacketType::Reset => {
                if seq_le(h.ack_nr, self.seq_nr) || self.state == State::SynSent {
                    self.close(now, CloseReason::Reset);
                }
                return;
            }
            _ => {}
        }
        // An ack of something we never sent is forged or stale: drop the packet.
        if seq_lt(self.seq_nr.wrapping_sub(1), h.ack_nr) {
            return;
        }
        match self.state {
            State::SynSent => {
                // Only the ack of our SYN moves us on.
                if h.ack_nr != self.acked_seq.wrapping_add(1) {
                    return;
                }
                self.state = State::Connected;
                self.ack_nr = h.seq_nr.wrapping_sub(1);
                self.events |= ev::CONNECTED;
                // Confirm our address to the acceptor even if the application has nothing to say.
                self.ack_pending = true;
            }
            State::SynReceived => {
                // The initiator acks our SYN-ack: its address is real.
                if h.ack_nr != self.seq_nr.wrapping_sub(1) {
                    return;
                }
                self.state = State::Connected;
                self.events |= ev::ACCEPTED;
            }
            _ => {}
        }
        self.last_recv = now;
        self.counters.packets_received += 1;
        self.reply_micro = micros(now).wrapping_sub(h.timestamp_us);
        self.process_ack(now, h, p.sack.as_ref(), cfg);
        if self.is_closed() {
            return;
        }
        match h.ty {
            PacketType::Data => self.receive_data(h.seq_nr, p.payload, cfg),
            PacketType::Fin => self.receive_fin(h.seq_nr),
            _ => {}
        }
        self.check_finished(now);
    }

    fn ack_nr_for_syn(&self) -> u16 {
        // For an acceptor, the SYN's sequence number is the first ack_nr; it only moves forward from
        // there, so any SYN not newer than it is a retransmission of the one we accepted.
        self.ack_nr
    }

    fn check_finished(&mut self, now: Instant) {
        if self.read_eof && self.fin_acked {
            self.close(now, CloseReason::Finished);
        }
    }

    fn receive_data(&mut self, seq: u16, payload: &[u8], cfg: &UtpConfig) {
        self.ack_pending = true;
        if payload.is_empty() {
            return;
        }
        if let Some(eof) = self.eof_seq {
            if !seq_lt(seq, eof) {
                return;
            }
        }
        let next = self.ack_nr.wrapping_add(1);
        if seq_lt(seq, next) {
            self.counters.duplicates += 1;
            return;
        }
        let dist = usize::from(seq.wrapping_sub(next));
        let max_reorder = (cfg.recv_buffer / cfg.max_payload.max(1)).clamp(16, MAX_FLIGHT_PACKETS);
        if dist >= max_reorder || self.recv_free(cfg) < payload.len() {
            self.counters.dropped += 1;
            return;
        }
        if dist == 0 {
            let was_empty = self.recv_buf.is_empty();
            self.recv_buf.extend(payload);
            self.ack_nr = seq;
            if !self.ooo.is_empty() {
                self.ooo.pop_front();
            }
            while let Some(Some(_)) = self.ooo.front() {
                if let Some(Some(buf)) = self.ooo.pop_front() {
                    self.ooo_bytes -= buf.len();
                    self.recv_buf.extend(&buf);
                    self.ack_nr = self.ack_nr.wrapping_add(1);
                    if self.pool.len() < POOL_MAX {
                        self.pool.push(buf);
                    }
                }
            }
            self.check_eof();
            if was_empty {
                self.events |= ev::READABLE;
            }
        } else {
            if self.ooo.len() <= dist {
                self.ooo.resize(dist + 1, None);
            }
            if self.ooo[dist].is_some() {
                self.counters.duplicates += 1;
                return;
            }
            let mut buf = self.pool.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(payload);
            self.ooo_bytes += buf.len();
            self.ooo[dist] = Some(buf);
        }
    }

    fn receive_fin(&mut self, seq: u16) {
        self.ack_pending = true;
        if self.eof_seq.is_none() && seq_lt(self.ack_nr, seq) {
            self.eof_seq = Some(seq);
            // Nothing past the FIN can arrive; drop reorder slots beyond it.
            let keep = usize::from(seq.wrapping_sub(self.ack_nr.wrapping_add(1)));
            while self.ooo.len() > keep {
                if let Some(Some(b)) = self.ooo.pop_back() {
                    self.ooo_bytes -= b.len();
                }
            }
        }
        self.check_eof();
    }

    fn check_eof(&mut self) {
        if let Some(eof) = self.eof_seq {
            if !self.read_eof && eof == self.ack_nr.wrapping_add(1) {
                self.ack_nr = eof;
                self.read_eof = true;
                self.events |= ev::READABLE;
            }
        }
    }

    fn process_ack(
        &mut self,
        now: Instant,
        h: &Header,
        sack: Option<&SelectiveAck>,
        cfg: &UtpConfig,
    ) {
        self.peer_wnd = h.wnd_size as usize;
        let prev_in_flight = self.bytes_in_flight;
        let mut acked_bytes = 0usize;
        let mut rtt_sample: Option<u64> = None;
        let progressed = seq_lt(self.acked_seq, h.ack_nr);
        // Cumulative ack.
        while seq_lt(self.acked_seq, h.ack_nr) {
            let Some(s) = self.flight.pop_front() else {
                break;
            };
            self.acked_seq = self.acked_seq.wrapping_add(1);
            if !s.acked {
                acked_bytes += usize::from(s.len);
                self.on_acked(&s, now, &mut rtt_sample);
            }
        }
        // Selective ack: bit i is packet ack_nr + 2 + i.
        let mut sacked_any = false;
        if let Some(sack) = sack {
            if h.ack_nr == self.acked_seq {
                for i in 0..sack.bits() {
                    let idx = i + 1;
                    if idx >= self.flight.len() {
                        break;
                    }
                    if sack.get(i) && !self.flight[idx].acked {
                        let s = self.flight[idx];
                        self.flight[idx].acked = true;
                        acked_bytes += usize::from(s.len);
                        self.on_acked(&s, now, &mut rtt_sample);
                        sacked_any = true;
                    }
                }
            }
        }
        // Free what the peer has for good.
        let new_base = self.flight.front().map_or(self.sent_off, |s| s.offset);
        if new_base > self.send_base {
            let n = (new_base - self.send_base) as usize;
            self.send_buf.drain(..n);
            self.send_base = new_base;
            if self.want_writable && cfg.send_buffer - self.send_buf.len() >= cfg.send_buffer / 4 {
                self.want_writable = false;
                self.events |= ev::WRITABLE;
            }
        }
        if let Some(sample) = rtt_sample {
            self.update_rtt(sample);
        }
        if progressed {
            self.backoff = 0;
            self.dup_acks = 0;
            self.timeouts_in_row = 0;
            self.rto_at = if self.packets_out > 0 {
                Some(now + self.rto(cfg))
            } else {
                None
            };
        } else if h.ty == PacketType::State && !self.flight.is_empty() && acked_bytes == 0 {
            self.dup_acks += 1;
            if self.dup_acks == DUP_ACK_LIMIT {
                self.mark_lost_fast(0, cfg);
            }
        }
        // A packet with DUP_ACK_LIMIT packets acknowledged after it is lost.
        if sacked_any {
            let mut after = 0;
            for i in (0..self.flight.len()).rev() {
                let s = self.flight[i];
                if s.acked {
                    after += 1;
                } else if after >= DUP_ACK_LIMIT && !s.resend && s.transmissions == 1 {
                    // Only a first transmission: a retransmission's own loss is the timer's job
                    // (the packets acked after it may have been sent before it).
                    self.mark_lost_fast(i, cfg);
                }
            }
        }
        // The peer is alive but full: the probe it dropped does not count toward the limit.
        if self.peer_wnd < cfg.max_payload {
            self.timeouts_in_row = 0;
        }
        if acked_bytes > 0 {
            if h.timestamp_diff_us != 0 {
                self.last_delay_us = self.delay.sample(now, h.timestamp_diff_us);
            }
            self.ledbat(acked_bytes, prev_in_flight, cfg);
        }
    }

    fn on_acked(&mut self, s: &Sent, now: Instant, rtt: &mut Option<u64>) {
        if s.in_flight {
            self.bytes_in_flight -= usize::from(s.len);
            self.packets_out -= 1;
        }
        if s.resend {
            self.resend_pending -= 1;
        }
        if s.transmissions == 1 {
            let r = (now - s.sent_at).as_micros() as u64;
            *rtt = Some(rtt.map_or(r, |x: u64| x.min(r)));
        }
        if s.kind == Kind::Fin {
            self.fin_acked = true;
        }
    }

    fn update_rtt(&mut self, sample: u64) {
        self.rtt_us = Some(match self.rtt_us {
            None => (sample, sample / 2),
            Some((rtt, var)) => {
                let delta = rtt.abs_diff(sample);
                let var = (var * 3 + delta) / 4;
                let rtt = (rtt * 7 + sample) / 8;
                (rtt, var)
            }
        });
    }

    /// LEDBAT (BEP 29): grow or shrink the window in proportion to how far the queueing delay is from
    /// the target; plus slow start until the delay nears the target or a loss.
    fn ledbat(&mut self, acked: usize, prev_in_flight: usize, cfg: &UtpConfig) {
        let target = cfg.target_delay.as_micros().max(1) as i64;
        let delay = self.last_delay_us as i64;
        let off_target = target - delay;
        let cwnd = self.cwnd.max(1) as i64;
        let mut gain = cfg.max_cwnd_gain as i64 * off_target * acked as i64 / (target * cwnd);
        if self.slow_start {
            if delay > target / 2 || self.cwnd >= self.ssthresh {
                self.slow_start = false;
            } else {
                gain = gain.max(acked as i64);
            }
        }
        // Only a window that was in use may grow.
        if gain > 0 && prev_in_flight + cfg.max_payload < self.cwnd {
            return;
        }
        let next = (cwnd + gain).clamp(cfg.max_payload as i64, cfg.max_cwnd as i64);
        self.cwnd = next as usize;
    }

    fn mark_lost_fast(&mut self, idx: usize, cfg: &UtpConfig) {
        let Some(s) = self.flight.get(idx).copied() else {
            return;
        };
        if s.acked || s.resend || s.transmissions == 0 {
            return;
        }
        let seq = self.acked_seq.wrapping_add(1).wrapping_add(idx as u16);
        let s = &mut self.flight[idx];
        s.resend = true;
        s.fast = true;
        if s.in_flight {
            s.in_flight = false;
            self.bytes_in_flight -= usize::from(s.len);
            self.packets_out -= 1;
        }
        self.resend_pending += 1;
        // One window cut per window of data.
        if !seq_lt(seq, self.loss_cut_seq) {
            self.cwnd = (self.cwnd / 2).max(cfg.max_payload);
            self.ssthresh = self.cwnd;
            self.slow_start = false;
            self.loss_cut_seq = self.seq_nr;
        }
    }

    // ------------------------------------------------------------------ timers

    /// The earliest moment this connection needs [`Conn::handle_timeout`].
    pub fn next_deadline(&self, cfg: &UtpConfig) -> Option<Instant> {
        let mut d = self.rto_at;
        let mut min = |t: Instant| d = Some(d.map_or(t, |x: Instant| x.min(t)));
        match self.state {
            State::SynSent => {}
            State::SynReceived => min(self.created + cfg.half_open_timeout),
            State::Connected => {
                min(self.last_recv + cfg.idle_timeout);
                if !self.ack_pending {
                    min(self.last_send + cfg.keepalive_interval);
                }
            }
            State::Closed(_) => {
                let at = self.closed_at.unwrap_or(self.created);
                // Stay while the application has bytes to read, within reason.
                let linger = if self.recv_buf.is_empty() {
                    cfg.linger
                } else {
                    cfg.idle_timeout
                };
                return Some(at + linger);
            }
        }
        d
    }

    /// Whether a closed connection has lingered long enough to be forgotten.
    pub fn reapable(&self, now: Instant, cfg: &UtpConfig) -> bool {
        self.is_closed() && self.next_deadline(cfg).is_some_and(|d| d <= now)
    }

    /// Fires whatever timers are due.
    pub fn handle_timeout(&mut self, now: Instant, cfg: &UtpConfig) {
        match self.state {
            State::Closed(_) => return,
            State::SynReceived if now >= self.created + cfg.half_open_timeout => {
                self.close(now, CloseReason::TimedOut);
                return;
            }
            State::Connected if now >= self.last_recv + cfg.idle_timeout => {
                self.close(now, CloseReason::TimedOut);
                return;
            }
            _ => {}
        }
        if self.rto_at.is_some_and(|t| t <= now) {
            self.rto_at = None;
            self.counters.timeouts += 1;
            if let Some(front) = self.flight.iter().find(|s| !s.acked).copied() {
                let limit = if front.kind == Kind::Syn {
                    cfg.syn_retransmits
                } else {
                    cfg.max_retransmits
                };
                if self.timeouts_in_row >= limit {
                    let reason = if front.kind == Kind::Syn {
                        CloseReason::ConnectTimedOut
                    } else {
                        CloseReason::TimedOut
                    };
                    self.close(now, reason);
                    return;
                }
                for s in self.flight.iter_mut() {
                    if s.acked || s.transmissions == 0 {
                        continue;
                    }
                    s.fast = false;
                    if s.in_flight {
                        s.in_flight = false;
                        self.bytes_in_flight -= usize::from(s.len);
                        self.packets_out -= 1;
                    }
                    if !s.resend {
                        s.resend = true;
                        self.resend_pending += 1;
                    }
                }
                self.ssthresh = (self.cwnd / 2).max(2 * cfg.max_payload);
                self.cwnd = cfg.max_payload;
                self.slow_start = true;
                self.backoff += 1;
                self.timeouts_in_row = self.timeouts_in_row.saturating_add(1);
                self.dup_acks = 0;
                self.loss_cut_seq = self.seq_nr;
            } else if self.send_buf.len() as u64 > self.sent_off - self.send_base {
                // Window closed with nothing in flight: probe with one packet.
                self.probe = true;
                self.backoff += 1;
            }
        }
        if self.state == State::Connected && now >= self.last_send + cfg.keepalive_interval {
            self.ack_pending = true;
        }
    }

    // ------------------------------------------------------------------ outgoing packets

    /// Whether [`Conn::poll_transmit`] may have something to send.
    pub fn wants_transmit(&self) -> bool {
        self.ack_pending
            || (!self.is_closed()
                && (self.resend_pending > 0
                    || (self.state == State::Connected
                        && (self.unsent() > 0 || (self.write_shut && !self.fin_queued())))))
    }

    fn unsent(&self) -> u64 {
        self.send_base + self.send_buf.len() as u64 - self.sent_off
    }

    fn fin_queued(&self) -> bool {
        self.fin_acked || self.flight.iter().any(|s| s.kind == Kind::Fin)
    }

    fn push_flight(&mut self, kind: Kind, offset: u64, len: u16, now: Instant) {
        self.flight.push_back(Sent {
            kind,
            offset,
            len,
            sent_at: now,
            transmissions: 0,
            acked: false,
            in_flight: false,
            resend: true,
            fast: true,
        });
        self.resend_pending += 1;
        self.seq_nr = self.seq_nr.wrapping_add(1);
    }

    fn window(&self) -> usize {
        self.cwnd.min(self.peer_wnd)
    }

    /// Writes the next packet into `out` (cleared first); false when there is nothing to send now.
    pub fn poll_transmit(&mut self, now: Instant, cfg: &UtpConfig, out: &mut Vec<u8>) -> bool {
        out.clear();
        if self.is_closed() {
            if self.ack_pending {
                self.ack_pending = false;
                let h = self.header(PacketType::State, self.seq_nr, now, cfg);
                write_header(&h, self.sack().as_ref(), out);
                self.counters.packets_sent += 1;
                return true;
            }
            return false;
        }
        // 1. Retransmissions (and the first send of a SYN), oldest first.
        if self.resend_pending > 0 {
            let window = self.window();
            let allow_any = self.bytes_in_flight == 0;
            if let Some(idx) = self.flight.iter().position(|s| s.resend && !s.acked) {
                let s = self.flight[idx];
                if s.fast || allow_any || self.bytes_in_flight + usize::from(s.len) <= window {
                    self.send_flight(idx, now, cfg, out);
                    return true;
                }
            }
        }
        // 2. New data.
        if self.state == State::Connected
            && self.resend_pending == 0
            && self.flight.len() < MAX_FLIGHT_PACKETS
        {
            let unsent = self.unsent();
            if unsent > 0 {
                let want = (unsent as usize).min(cfg.max_payload);
                let avail = self.window().saturating_sub(self.bytes_in_flight);
                let mut len = want.min(avail);
                let nothing_out = self.bytes_in_flight == 0;
                if self.probe && nothing_out {
                    len = want;
                }
                // Nagle: a short packet waits while data is unacknowledged, unless the stream ends.
                let short = len < cfg.max_payload && !(self.write_shut && len == unsent as usize);
                let hold = len == 0 || (!nothing_out && (len < want || short));
                if !hold {
                    self.probe = false;
                    let off = self.sent_off;
                    self.sent_off += len as u64;
                    self.push_flight(Kind::Data, off, len as u16, now);
                    let idx = self.flight.len() - 1;
                    self.send_flight(idx, now, cfg, out);
                    return true;
                }
                if nothing_out && self.rto_at.is_none() {
                    // Zero window: arm the probe.
                    self.rto_at = Some(now + self.rto(cfg));
                }
            } else if self.write_shut && !self.fin_queued() {
                self.push_flight(Kind::Fin, self.sent_off, 0, now);
                let idx = self.flight.len() - 1;
                self.send_flight(idx, now, cfg, out);
                return true;
            }
        }
        // 3. A bare ack.
        if self.ack_pending && self.state != State::SynSent {
            self.ack_pending = false;
            let h = self.header(PacketType::State, self.seq_nr, now, cfg);
            write_header(&h, self.sack().as_ref(), out);
            self.last_send = now;
            self.counters.packets_sent += 1;
            return true;
        }
        false
    }

    fn send_flight(&mut self, idx: usize, now: Instant, cfg: &UtpConfig, out: &mut Vec<u8>) {
        let seq = self.acked_seq.wrapping_add(1).wrapping_add(idx as u16);
        let s = self.flight[idx];
        let ty = match s.kind {
            Kind::Syn => PacketType::Syn,
            Kind::Data => PacketType::Data,
            Kind::Fin => PacketType::Fin,
        };
        let mut h = self.header(ty, seq, now, cfg);
        let sack = if s.kind == Kind::Syn {
            h.connection_id = self.recv_id;
            h.ack_nr = 0;
            None
        } else {
            self.sack()
        };
        write_header(&h, sack.as_ref(), out);
        if s.len > 0 {
            let start = (s.offset - self.send_base) as usize;
            let end = start + usize::from(s.len);
            let (a, b) = self.send_buf.as_slices();
            if end <= a.len() {
                out.extend_from_slice(&a[start..end]);
            } else if start >= a.len() {
                out.extend_from_slice(&b[start - a.len()..end - a.len()]);
            } else {
                out.extend_from_slice(&a[start..]);
                out.extend_from_slice(&b[..end - a.len()]);
            }
        }
        let e = &mut self.flight[idx];
        if e.transmissions > 0 {
            if e.fast {
                self.counters.fast_resends += 1;
            } else {
                self.counters.timeout_resends += 1;
            }
        }
        e.transmissions = e.transmissions.saturating_add(1);
        e.sent_at = now;
        e.resend = false;
        e.fast = false;
        e.in_flight = true;
        self.resend_pending -= 1;
        // The timer runs from the oldest packet in flight: arm it when this one starts a flight (a
        // zero-window probe timer that was pending does not count).
        let starts_flight = self.packets_out == 0;
        self.bytes_in_flight += usize::from(s.len);
        self.packets_out += 1;
        if starts_flight || self.rto_at.is_none() {
            self.rto_at = Some(now + self.rto(cfg));
        }
        if ty != PacketType::Syn {
            self.ack_pending = false;
        }
        self.last_send = now;
        self.counters.packets_sent += 1;
    }

    fn header(&mut self, ty: PacketType, seq_nr: u16, now: Instant, cfg: &UtpConfig) -> Header {
        let wnd = self.recv_free(cfg);
        self.advertised = wnd;
        Header {
            ty,
            connection_id: self.send_id,
            timestamp_us: micros(now),
            timestamp_diff_us: self.reply_micro,
            wnd_size: u32::try_from(wnd).unwrap_or(u32::MAX),
            seq_nr,
            ack_nr: self.ack_nr,
        }
    }

    /// The selective ack of what sits in the reorder buffer, if anything does.
    fn sack(&self) -> Option<SelectiveAck> {
        // ooo[k] holds ack_nr + 1 + k; bit i covers ack_nr + 2 + i, i.e. ooo[i + 1].
        let last = self.ooo.iter().rposition(|s| s.is_some())?;
        let bits = last.min(MAX_SACK_BYTES * 8);
        let bytes = bits.div_ceil(8).div_ceil(4) * 4;
        let mut sack = SelectiveAck::with_len(bytes.clamp(4, MAX_SACK_BYTES));
        for i in 0..sack.bits() {
            if self.ooo.get(i + 1).is_some_and(|s| s.is_some()) {
                sack.set(i);
            }
        }
        Some(sack)
    }
}

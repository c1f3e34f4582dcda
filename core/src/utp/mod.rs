//! uTP, the uTorrent transport protocol (BEP 29), as a sans-IO state machine.
//!
//! uTP is a reliable, ordered byte stream over UDP with delay-based congestion control (LEDBAT): it fills
//! an idle link but backs off as soon as its own packets start to queue, so seeding does not hurt the
//! user's other traffic. Most BitTorrent clients prefer it to TCP.
//!
//! - [`packet`]: the 20-byte header, the selective-ack extension, parsing and writing.
//! - [`UtpSocket`]: everything that shares one UDP socket. Datagrams go in through
//!   [`UtpSocket::handle_datagram`] and are routed by (source address, connection id); datagrams to send
//!   come out of [`UtpSocket::poll_transmit`]; [`UtpSocket::poll_timeout`] / [`UtpSocket::handle_timeout`]
//!   drive the timers; [`UtpSocket::poll_event`] reports connected / accepted / readable / writable /
//!   closed; [`UtpSocket::write`] and [`UtpSocket::read`] move stream bytes with backpressure.
//! - Per connection (private `conn` module): connection ids, wrapping sequence and ack numbers, selective acks,
//!   timestamps and `timestamp_difference`, the receive window, LEDBAT (100 ms target) with slow start,
//!   retransmission timeouts from measured RTT (at least 500 ms, doubled on each expiry) and a limit on
//!   retransmissions, fast retransmit on three duplicate acks or a selective ack, MTU-sized packets with
//!   Nagle-like coalescing, FIN and RESET, idle timeouts and keep-alives.
//! - [`sim`]: an in-memory link (latency, loss, a bottleneck rate, reordering and duplication) on a
//!   virtual clock, for tests and benches.
//!
//! The core never reads a clock: every timestamp on the wire is derived from the [`Instant`] passed in.
//!
//! [`Instant`]: crate::time::Instant

mod conn;
pub mod packet;
pub mod sim;
mod socket;

#[cfg(test)]
mod tests;

pub use conn::Counters;
pub use socket::{ConnId, ConnStats, Event, SocketStats, UtpSocket};

use std::time::Duration;

/// Tunables of the uTP socket and its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtpConfig {
    /// Payload bytes per data packet (1,400: a 1,420-byte datagram fits any common path MTU).
    pub max_payload: usize,
    /// LEDBAT's target queueing delay (100 ms by BEP 29).
    pub target_delay: Duration,
    /// LEDBAT's largest window growth per round trip, in bytes (3,000 by BEP 29).
    pub max_cwnd_gain: usize,
    /// Congestion window at the start, in bytes.
    pub initial_cwnd: usize,
    /// Ceiling of the congestion window, in bytes.
    pub max_cwnd: usize,
    /// Retransmission timeout before any RTT sample (also the SYN's first timeout).
    pub initial_rto: Duration,
    /// Floor of the retransmission timeout (500 ms by BEP 29).
    pub min_rto: Duration,
    /// Ceiling of the retransmission timeout after back-off.
    pub max_rto: Duration,
    /// How many times a data or FIN packet is retransmitted before the connection fails.
    pub max_retransmits: u8,
    /// How many times a SYN is retransmitted before the connect fails.
    pub syn_retransmits: u8,
    /// A connection that hears nothing from its peer this long fails.
    pub idle_timeout: Duration,
    /// An idle connection sends an ack this often so the peer's idle timer does not fire.
    pub keepalive_interval: Duration,
    /// An accepted SYN whose initiator sends nothing more within this time is dropped silently.
    pub half_open_timeout: Duration,
    /// A closed connection stays this long to answer retransmitted FINs and data with acks.
    pub linger: Duration,
    /// Cap on bytes written by the application and not yet acknowledged by the peer.
    pub send_buffer: usize,
    /// Cap on received bytes not yet read by the application (in order plus out of order); the
    /// advertised window is what is left of it.
    pub recv_buffer: usize,
    /// Cap on connections of all kinds at once.
    pub max_connections: usize,
    /// Cap on accepted SYNs whose initiator has not yet proven its address.
    pub max_half_open: usize,
    /// Whether incoming SYNs are accepted at all.
    pub accept_incoming: bool,
    /// RESETs sent in answer to packets for unknown connections, per second.
    pub reset_rate: u32,
    /// Burst allowance of those RESETs.
    pub reset_burst: u32,
}

impl Default for UtpConfig {
    fn default() -> Self {
        UtpConfig {
            max_payload: 1400,
            target_delay: Duration::from_millis(100),
            max_cwnd_gain: 3000,
            initial_cwnd: 2 * 1400,
            max_cwnd: 1 << 20,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(500),
            max_rto: Duration::from_secs(60),
            max_retransmits: 6,
            syn_retransmits: 2,
            idle_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(29),
            half_open_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(5),
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            max_connections: 1024,
            max_half_open: 64,
            accept_incoming: true,
            reset_rate: 10,
            reset_burst: 20,
        }
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// Both sides sent FIN and every byte was acknowledged.
    #[error("closed gracefully")]
    Finished,
    /// The peer sent RESET.
    #[error("reset by peer")]
    Reset,
    /// The SYN went unanswered after every retransmission.
    #[error("connect timed out")]
    ConnectTimedOut,
    /// A packet went unacknowledged after every retransmission, or the peer fell silent.
    #[error("timed out")]
    TimedOut,
    /// The application aborted the connection (a RESET was sent).
    #[error("aborted locally")]
    Aborted,
}

/// Why a stream operation did not move bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such connection (never existed, or already reaped).
    #[error("unknown uTP connection")]
    UnknownConnection,
    /// Nothing to read yet; an `Event::Readable` will follow.
    #[error("would block")]
    WouldBlock,
    /// The write side was closed with [`UtpSocket::close`].
    #[error("write side already closed")]
    WriteClosed,
    /// The connection is closed; pending received bytes were all read.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
}

/// Why a connect could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// [`UtpConfig::max_connections`] reached.
    #[error("too many uTP connections")]
    TooManyConnections,
    /// No free connection id for that address (practically unreachable).
    #[error("no free connection id")]
    NoFreeId,
}

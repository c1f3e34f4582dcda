//! Trackers: the BEP 15 UDP protocol and the BEP 3 / 23 / 7 HTTP protocol, sans-IO.
//!
//! The types in this module are what both transports share, so that the announce policy (tiers,
//! events, intervals, back-off) is written once and does not care which transport a tracker speaks.

pub mod announce;
pub mod udp;
pub mod udp_client;

use std::net::SocketAddr;
use std::time::Duration;

use crate::types::{InfoHash, PeerId};

/// The `event` of an announce (BEP 3). BEP 15 numbers them differently from this declaration order
/// (none=0, completed=1, started=2, stopped=3): see [`udp::event_to_wire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AnnounceEvent {
    /// A regular, periodic announce.
    #[default]
    None,
    /// The first announce of a torrent in this session.
    Started,
    /// The download has just finished; sent once.
    Completed,
    /// The torrent is being paused, removed or the client shut down.
    Stopped,
}

/// Everything an announce says about us, whatever the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceParams {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Our peer id for this session.
    pub peer_id: PeerId,
    /// The TCP port we accept peers on.
    pub port: u16,
    /// Payload bytes uploaded since the `started` event.
    pub uploaded: u64,
    /// Payload bytes downloaded since the `started` event.
    pub downloaded: u64,
    /// Bytes still missing to complete the download (of the selected files).
    pub left: u64,
    /// Which event this announce reports.
    pub event: AnnounceEvent,
    /// How many peers we would like; `None` lets the tracker choose.
    pub num_want: Option<u32>,
    /// A random key that lets a tracker recognise us across IP changes; fixed per session.
    pub key: u32,
}

/// What a tracker answered to an announce, whatever the transport.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnnounceResponse {
    /// How long to wait before the next regular announce.
    pub interval: Duration,
    /// The shortest wait the tracker allows between announces, when it says.
    pub min_interval: Option<Duration>,
    /// Peers (IPv4 and IPv6), in the tracker's order, duplicates removed.
    pub peers: Vec<SocketAddr>,
    /// Seeders in the swarm (`complete`), when the tracker says.
    pub seeders: Option<u32>,
    /// Leechers in the swarm (`incomplete`), when the tracker says.
    pub leechers: Option<u32>,
    /// An opaque id the HTTP tracker wants echoed in later announces.
    pub tracker_id: Option<Vec<u8>>,
    /// A non-fatal `warning message` from an HTTP tracker.
    pub warning: Option<String>,
    /// Bytes at the end of a compact peer list (`peers`, `peers6`, or a UDP reply's list) that made no
    /// whole 6- or 18-byte entry. They are ignored and the whole entries kept; non-zero means a sloppy or
    /// hostile tracker, and the announce policy reports it as the tracker's warning.
    pub stray_bytes: usize,
}

/// The per-torrent counters a scrape returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrapeStats {
    /// Seeders (`complete`).
    pub seeders: u32,
    /// Times the torrent was downloaded to completion (`downloaded`).
    pub completed: u32,
    /// Leechers (`incomplete`).
    pub leechers: u32,
}

pub mod http;
pub mod http_client;

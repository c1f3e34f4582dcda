//! # hyperblow-core
//!
//! The sans-IO heart of the Hyperblow BitTorrent client. Nothing in this crate opens a socket, touches a
//! file, reads the clock or asks the operating system for randomness: bytes, time ([`time::Instant`]) and
//! random seeds ([`rng::CoreRng`]) go in, and parsed values, bytes to send, deadlines and requests for disk
//! or hash work come out. That keeps every protocol deterministic under test and identical under any async
//! runtime.

pub mod bencode;
pub mod bitfield;
pub mod choker;
pub mod dht;
pub mod engine;
pub mod ext;
pub mod magnet;
pub mod metainfo;
pub mod mse;
pub mod peer;
pub mod percent;
pub mod picker;
pub mod ratelimit;
pub mod rng;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod time;
pub mod tracker;
pub mod types;
pub mod utp;
pub mod webseed;
pub mod wire;

pub use time::Instant;
pub use types::{InfoHash, PeerId};

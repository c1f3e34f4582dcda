//! # hyperblow-tokio
//!
//! Binds the sans-IO `hyperblow-core` engine to tokio's TCP/UDP sockets, timers and blocking pool.
//! The event loop lands with the engine; until then this crate only re-exports the core so that front ends
//! can already depend on the driver they will run on.

pub use hyperblow_core as core;

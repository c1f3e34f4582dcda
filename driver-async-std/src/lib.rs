//! # hyperblow-async-std
//!
//! Binds the sans-IO `hyperblow-core` engine to async-std's sockets and timers. async-std is discontinued
//! upstream (RUSTSEC-2025-0052); the driver is written against `futures-io` style traits so that a smol
//! driver would cost little. The event loop lands with the engine; until then this crate only re-exports
//! the core.

pub use hyperblow_core as core;

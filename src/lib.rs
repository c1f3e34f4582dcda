//! Shared helpers for Hyperblow's cross-crate integration tests and benchmarks.
//!
//! The real code lives in the workspace crates (`core/`, `driver-*/`, `cli/`); this crate only gathers
//! fixtures that several tests or benches need, so that they are written once.

pub mod fixture;
pub mod interop;
pub mod sim;
pub mod trackers;

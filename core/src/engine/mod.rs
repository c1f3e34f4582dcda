//! The engine: many torrents, their peers and trackers, behind one sans-IO input/output contract.
//!
//! Inputs are method calls that carry `now` (bytes read, connections opened or closed, datagrams,
//! finished jobs, resolved names, timer expiries, user commands); outputs are drained with
//! [`Engine::poll_output`] (see [`Output`]), events with [`Engine::poll_event`], and the next deadline
//! with [`Engine::poll_timeout`]. The contract's types live in [`io`].

pub mod io;

pub use io::*;

//! Finding the real BitTorrent software that interop tests run against.
//!
//! `.ci/run` installs the Debian packages (`opentracker`, `python3-libtorrent`, `mktorrent`,
//! `transmission-cli`, `transmission-daemon`, `aria2`). On a developer machine without them the tests fail loudly
//! with the install command; setting `HYPERBLOW_SKIP_INTEROP=1` skips them instead, except under CI
//! (`CI` set), where skipping is never allowed.
//!
//! The harness that drives those programs:
//! - [`process`]: [`ChildGuard`] (spawn with logs, hard time bound, stop by PID on drop) and
//!   [`wait_for`] (bounded polling whose errors quote the processes' log tails).
//! - [`ports`]: free TCP+UDP ports on 127.0.0.1.
//! - [`opentracker`]: a whitelisting tracker on loopback, plus HTTP/UDP probes.
//! - [`libtorrent`]: seeders and leechers run by `tests/interop/lt_peer.py`.
//! - [`transmission`]: `transmission-daemon` driven by `transmission-remote`.
//! - [`aria2`]: `aria2c` seeding or leeching through HTTP trackers.
//! - [`nginx`]: a real web server (a TLS front for opentracker) and a test CA made with `rcgen`.
//! - [`fixtures`]: deterministic payloads and `mktorrent`-made `.torrent` files.
//! - [`relay`]: a UDP relay that delays, drops, reorders and duplicates datagrams (uTP tests).
//!
//! Every program listens on 127.0.0.1 only, with DHT, LSD, UPnP and NAT-PMP off. For belt and
//! braces, run the suite inside a network namespace that has only loopback: `scripts/netns.sh
//! cargo test --test interop_harness` (see that script).

pub mod aria2;
pub mod fixtures;
pub mod libtorrent;
pub mod nginx;
pub mod opentracker;
pub mod ports;
pub mod process;
pub mod relay;
pub mod transmission;

pub use aria2::{Aria2, Aria2Role};
pub use fixtures::{mktorrent, payload, write_payload, TorrentFile};
pub use libtorrent::{LtConfig, LtLine, LtPeer, LtRole, LtSource, LtStatus};
pub use nginx::{Nginx, TestPki};
pub use opentracker::{
    http_get, udp_connect, udp_exchange, udp_exchange_raw, HttpReply, Opentracker,
};
pub use ports::{free_addr, free_port};
pub use process::{run_bounded, run_checked, wait_for, ChildGuard, HarnessError, Signal};
pub use relay::{RelayConfig, RelayStats, UdpRelay};
pub use transmission::Transmission;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable that lets a developer skip interop tests locally.
pub const SKIP_VAR: &str = "HYPERBLOW_SKIP_INTEROP";

/// Debian's Python, which is the one that imports `libtorrent` from `python3-libtorrent` (the first
/// `python3` on PATH may be another build without it).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

const INSTALL_HINT: &str = "apt-get install -y opentracker python3-libtorrent mktorrent \
                            transmission-cli transmission-daemon aria2 nginx";

/// Whether the caller may skip a missing tool: only when asked explicitly and never in CI.
fn skip_allowed() -> bool {
    std::env::var_os(SKIP_VAR).is_some_and(|v| v == "1") && std::env::var_os("CI").is_none()
}

/// Reports a missing prerequisite: returns `None` (the test should return early) when skipping is
/// allowed, and panics with the install command otherwise.
pub fn missing(what: &str) -> Option<PathBuf> {
    if skip_allowed() {
        eprintln!("SKIPPED: {what} is not available and {SKIP_VAR}=1");
        return None;
    }
    panic!(
        "interop prerequisite missing: {what}. Install it with `{INSTALL_HINT}` \
         (or set {SKIP_VAR}=1 to skip interop tests on a developer machine; never in CI)"
    );
}

/// Finds an executable on PATH (or an absolute path), or reports it missing (see [`missing`]).
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = if Path::new(name).is_absolute() {
        Path::new(name).is_file().then(|| PathBuf::from(name))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    };
    found.or_else(|| missing(name))
}

/// Debian's Python with the libtorrent bindings importable, or reports it missing (see [`missing`]).
pub fn require_libtorrent() -> Option<PathBuf> {
    let ok = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import libtorrent"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Some(PathBuf::from(SYSTEM_PYTHON))
    } else {
        missing("python3-libtorrent (import libtorrent from /usr/bin/python3)")
    }
}

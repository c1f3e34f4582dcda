//! aria2 (`aria2c` 1.36, C++) as a seeder or leecher of a `.torrent`, on 127.0.0.1.
//!
//! Its settings: DHT (both families), LSD and PEX off, IPv6 off, every socket bound to 127.0.0.1
//! (`--interface`), no file pre-allocation, its log at info level under the test's directory. aria2
//! has no UDP tracker support without its DHT, so tests give it HTTP trackers. It opens every
//! connection with an MSE handshake and falls back to plain BitTorrent, and batches its `have`s into
//! mid-connection `bitfield`s (see ARCHITECTURE.md, interop notes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyperblow_core::tracker::http::{parse_scrape_response, scrape_url};
use hyperblow_core::InfoHash;

use super::process::{wait_for, ChildGuard, HarnessError, Result};
use super::{http_get, require_tool};

/// What aria2 does with the torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aria2Role {
    /// Check the data in the directory, then seed until stopped.
    Seed,
    /// Download into the directory and exit once complete (exit code 0).
    Leech,
}

/// A running `aria2c`.
#[derive(Debug)]
pub struct Aria2 {
    proc: ChildGuard,
    port: u16,
    log: PathBuf,
}

impl Aria2 {
    /// Starts `aria2c` on `torrent` with data in `dir`, listening on 127.0.0.1:`port`, bounded by
    /// `bound`; logs under `log_dir`. `Ok(None)` when aria2 is missing and skipping is allowed.
    pub fn spawn(
        name: &str,
        role: Aria2Role,
        torrent: &Path,
        dir: &Path,
        port: u16,
        log_dir: &Path,
        bound: Duration,
    ) -> Result<Option<Aria2>> {
        Aria2::spawn_with(name, role, torrent, dir, port, log_dir, bound, &[])
    }

    /// [`Aria2::spawn`] with more `aria2c` options after ours (a later option wins, e.g.
    /// `--log-level=debug`, `--bt-require-crypto=true`).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_with(
        name: &str,
        role: Aria2Role,
        torrent: &Path,
        dir: &Path,
        port: u16,
        log_dir: &Path,
        bound: Duration,
        extra: &[&str],
    ) -> Result<Option<Aria2>> {
        let Some(aria2c) = require_tool("aria2c") else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir)
            .map_err(HarnessError::io(format!("mkdir {}", dir.display())))?;
        let log = log_dir.join(format!("{name}.aria2.log"));
        let mut cmd = Command::new(aria2c);
        cmd.arg(format!("--dir={}", dir.display()))
            .arg(format!("--listen-port={port}"))
            .arg(format!("--log={}", log.display()))
            .args([
                "--log-level=info",
                "--console-log-level=warn",
                "--summary-interval=0",
                "--enable-color=false",
                "--interface=127.0.0.1",
                "--disable-ipv6=true",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--file-allocation=none",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "--bt-save-metadata=false",
                "--bt-hash-check-seed=true",
                "--check-integrity=true",
                // A refused or lost peer is retried soon.
                "--bt-tracker-interval=2",
            ]);
        match role {
            // Seed whatever the ratio, until stopped (the guard bounds the run).
            Aria2Role::Seed => cmd.args(["--seed-ratio=0.0"]),
            Aria2Role::Leech => cmd.args(["--seed-time=0"]),
        };
        cmd.args(extra);
        cmd.arg(torrent);
        let proc = ChildGuard::spawn(name, &cmd, log_dir, bound)?;
        Ok(Some(Aria2 { proc, port, log }))
    }

    /// The process (PID, exit, stop).
    pub fn process(&self) -> &ChildGuard {
        &self.proc
    }

    /// `127.0.0.1:port`, where it accepts peers.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// aria2's own log, whole.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of aria2's own log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Waits until the HTTP tracker `announce_url` counts at least one seeder of `info_hash` (a seeder's
/// announce arrived), polling its scrape.
pub fn wait_for_seeder(
    announce_url: &str,
    info_hash: InfoHash,
    timeout: Duration,
    procs: &[&ChildGuard],
) -> Result<()> {
    let url = scrape_url(announce_url, &[info_hash])
        .map_err(|e| HarnessError::Tool {
            what: format!("scrape URL of {announce_url}"),
            detail: e.to_string(),
        })?
        .to_string();
    wait_for("a seeder at the tracker", timeout, procs, || {
        let Ok(reply) = http_get(&url, Duration::from_secs(5)) else {
            return Ok(None);
        };
        let seeders = parse_scrape_response(&reply.body)
            .ok()
            .and_then(|l| l.into_iter().find(|(h, _)| *h == info_hash))
            .map_or(0, |(_, s)| s.seeders);
        Ok((seeders > 0).then_some(()))
    })
}

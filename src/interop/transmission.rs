//! Transmission 3.00 as a peer: `transmission-daemon -f` with its own config dir, controlled with
//! `transmission-remote 127.0.0.1:RPCPORT`.
//!
//! Known quirks (BRIEF §4, and seen here):
//! - It does not create 0-byte files.
//! - It ignores 127.0.0.1 peers handed out by a tracker but accepts incoming connections from
//!   them, so a seeder must connect out to [`Transmission::peer_addr`] for it to download.
//! - As a seeder it serves one leecher per IP address: loopback tests need one daemon per leecher.
//! - Adding a torrent starts with a "Verifying" pass even when the download dir is empty.
//! - A new peer connection sits idle for up to ~10 s before Transmission asks for pieces (seen: the
//!   seeder's connection was up 1.5 s after adding, the first piece came ~10 s later), which matches
//!   its 10 s rechoke/interest period; a 300 KiB download takes ~11 s from libtorrent, against ~0.6 s
//!   for a libtorrent leecher.
//! - `encryption` is set to 0 (prefer plaintext, accept MSE): Hyperblow speaks plaintext only.
//! - `transmission-remote -l` prints a table whose first column is the torrent id (1 for the first).

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::ports::free_port;
use super::process::{run_bounded, wait_for, ChildGuard, HarnessError, Result};
use super::require_tool;

/// How long one `transmission-remote` call may take.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the daemon gets to start answering RPC.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How many times [`Transmission::start`] starts the daemon (on new ports) before giving up.
pub const START_ATTEMPTS: usize = 3;

/// A running `transmission-daemon`, stopped by PID when dropped.
#[derive(Debug)]
pub struct Transmission {
    // Field order matters: the process is stopped before its directory is removed.
    proc: ChildGuard,
    rpc_port: u16,
    peer_port: u16,
    remote: PathBuf,
    download_dir: PathBuf,
    dir: tempfile::TempDir,
}

/// The `settings.json` the daemon starts with: everything that could reach beyond loopback off.
pub fn settings_json(rpc_port: u16, peer_port: u16, download_dir: &Path) -> String {
    let dl = serde_json::Value::String(download_dir.to_string_lossy().into_owned());
    format!(
        r#"{{
  "dht-enabled": false,
  "lpd-enabled": false,
  "utp-enabled": false,
  "encryption": 0,
  "pex-enabled": false,
  "port-forwarding-enabled": false,
  "bind-address-ipv4": "127.0.0.1",
  "bind-address-ipv6": "::1",
  "peer-port": {peer_port},
  "peer-port-random-on-start": false,
  "rpc-enabled": true,
  "rpc-bind-address": "127.0.0.1",
  "rpc-port": {rpc_port},
  "rpc-authentication-required": false,
  "rpc-whitelist-enabled": true,
  "rpc-whitelist": "127.0.0.1",
  "rpc-host-whitelist-enabled": false,
  "download-dir": {dl},
  "incomplete-dir-enabled": false,
  "watch-dir-enabled": false,
  "start-added-torrents": true,
  "speed-limit-down-enabled": false,
  "speed-limit-up-enabled": false,
  "alt-speed-enabled": false,
  "ratio-limit-enabled": false,
  "idle-seeding-limit-enabled": false,
  "download-queue-enabled": false,
  "seed-queue-enabled": false,
  "message-level": 2
}}
"#
    )
}

impl Transmission {
    /// Starts the daemon in the foreground on free loopback ports and waits until it listens on
    /// both and RPC answers; on new ports again (up to [`START_ATTEMPTS`] times) when it does not.
    /// `bound` is its hard run-time bound. `Ok(None)` when it is missing and skipping is allowed.
    pub fn start(name: &str, bound: Duration) -> Result<Option<Transmission>> {
        let Some(daemon) = require_tool("transmission-daemon") else {
            return Ok(None);
        };
        let Some(remote) = require_tool("transmission-remote") else {
            return Ok(None);
        };
        let mut last_err = None;
        for _attempt in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("hb-transmission-")
                .tempdir()
                .map_err(HarnessError::io("create the transmission dir"))?;
            let config = dir.path().join("config");
            let download_dir = dir.path().join("download");
            for d in [&config, &download_dir] {
                fs::create_dir_all(d)
                    .map_err(HarnessError::io(format!("create {}", d.display())))?;
            }
            let rpc_port = free_port()?;
            let peer_port = free_port()?;
            fs::write(
                config.join("settings.json"),
                settings_json(rpc_port, peer_port, &download_dir),
            )
            .map_err(HarnessError::io("write settings.json"))?;
            let mut cmd = Command::new(&daemon);
            cmd.arg("-f").arg("-g").arg(&config);
            let proc = ChildGuard::spawn(name, &cmd, dir.path(), bound)?;
            let t = Transmission {
                proc,
                rpc_port,
                peer_port,
                remote: remote.clone(),
                download_dir,
                dir,
            };
            match t.wait_ready() {
                Ok(()) => return Ok(Some(t)),
                // Another program took one of its ports: start again on new ones.
                Err(e @ (HarnessError::Exited { .. } | HarnessError::Timeout { .. })) => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| HarnessError::Tool {
            what: "start transmission-daemon".into(),
            detail: "no attempt was made".into(),
        }))
    }

    /// Waits until the daemon itself listens on its RPC and peer ports (another program that took
    /// one of them in the meantime does not count: see [`ChildGuard::listens_on_tcp`]; the daemon
    /// logs a failed peer-port bind and runs on without it) and RPC answers.
    fn wait_ready(&self) -> Result<()> {
        let rpc = SocketAddr::from((Ipv4Addr::LOCALHOST, self.rpc_port));
        wait_for(
            &format!(
                "transmission-daemon listening on {rpc} (RPC) and port {} (peers)",
                self.peer_port
            ),
            READY_TIMEOUT,
            &[&self.proc],
            || {
                if !self.proc.listens_on_tcp(self.rpc_port)
                    || !self.proc.listens_on_tcp(self.peer_port)
                    || TcpStream::connect_timeout(&rpc, Duration::from_millis(200)).is_err()
                {
                    return Ok(None);
                }
                Ok(self.remote(&["-l"]).ok())
            },
        )
        .map(drop)
    }

    /// The daemon's process (PID, logs, stop).
    pub fn process(&self) -> &ChildGuard {
        &self.proc
    }

    /// Where it downloads to.
    pub fn download_dir(&self) -> &Path {
        &self.download_dir
    }

    /// The temp dir holding config, downloads and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `127.0.0.1:peer-port`: where a seeder must connect to (it ignores tracker-given loopback
    /// peers).
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.peer_port))
    }

    /// The RPC port on 127.0.0.1.
    pub fn rpc_port(&self) -> u16 {
        self.rpc_port
    }

    /// Runs `transmission-remote 127.0.0.1:RPCPORT ARGS...` (bounded by [`REMOTE_TIMEOUT`]) and
    /// returns its stdout; a non-zero exit is an error.
    pub fn remote(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.remote);
        cmd.arg(format!("127.0.0.1:{}", self.rpc_port)).args(args);
        let done = run_bounded(&mut cmd, REMOTE_TIMEOUT)?;
        if done.status.success() {
            Ok(done.stdout)
        } else {
            Err(HarnessError::Tool {
                what: format!("transmission-remote {}", args.join(" ")),
                detail: format!("{}: {}{}", done.status, done.stdout, done.stderr),
            })
        }
    }

    /// Adds a `.torrent` (downloading into [`Self::download_dir`]) and returns its id.
    pub fn add_torrent(&self, torrent: &Path) -> Result<u32> {
        let before = self.ids()?;
        let path = torrent.to_string_lossy();
        let out = self.remote(&["-a", &path])?;
        if !out.contains("success") {
            return Err(HarnessError::Tool {
                what: format!("add {path} to transmission"),
                detail: out,
            });
        }
        let after = self.ids()?;
        after
            .into_iter()
            .find(|id| !before.contains(id))
            .ok_or_else(|| HarnessError::Tool {
                what: format!("add {path} to transmission"),
                detail: "no new torrent id in `-l`".into(),
            })
    }

    /// The ids of its torrents, from `-l`.
    pub fn ids(&self) -> Result<Vec<u32>> {
        let out = self.remote(&["-l"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|first| first.trim_end_matches('*').parse().ok())
            .collect())
    }

    /// `-t ID -i`: the torrent's details as text.
    pub fn info(&self, id: u32) -> Result<String> {
        self.remote(&["-t", &id.to_string(), "-i"])
    }

    /// The "Percent Done" of `-t ID -i`, 0.0 ..= 100.0.
    pub fn percent_done(&self, id: u32) -> Result<Option<f64>> {
        Ok(parse_percent_done(&self.info(id)?))
    }

    /// Waits until the torrent is 100 % done; returns how long that took from the call.
    pub fn wait_complete(
        &self,
        id: u32,
        timeout: Duration,
        others: &[&ChildGuard],
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut watched = vec![&self.proc];
        watched.extend_from_slice(others);
        wait_for(
            &format!("transmission torrent {id} to complete"),
            timeout,
            &watched,
            || Ok((self.percent_done(id)? == Some(100.0)).then(|| start.elapsed())),
        )
    }

    /// Stops (`-S`) the torrent: it sends its `stopped` announce and closes its peers.
    pub fn stop_torrent(&self, id: u32) -> Result<()> {
        self.remote(&["-t", &id.to_string(), "-S"]).map(drop)
    }
}

/// Reads "Percent Done: 42.5%" out of `transmission-remote -t ID -i`.
pub fn parse_percent_done(info: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("Percent Done:"))
        .and_then(|v| v.trim().trim_end_matches('%').parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_percent_done() {
        let info =
            "NAME\n  Id: 1\n\nTRANSFER\n  State: Idle\n  Percent Done: 100%\n  ETA: 0 seconds\n";
        assert_eq!(parse_percent_done(info), Some(100.0));
        assert_eq!(parse_percent_done("  Percent Done: 18.1%\n"), Some(18.1));
        assert_eq!(parse_percent_done("  Percent Done: n/a\n"), None);
        assert_eq!(parse_percent_done(""), None);
    }

    #[test]
    fn settings_are_valid_json_with_discovery_off() {
        let s = settings_json(1000, 1001, Path::new("/tmp/a \"b\""));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        for off in [
            "dht-enabled",
            "lpd-enabled",
            "utp-enabled",
            "pex-enabled",
            "port-forwarding-enabled",
        ] {
            assert_eq!(v[off], serde_json::Value::Bool(false), "{off}");
        }
        assert_eq!(v["rpc-bind-address"], "127.0.0.1");
        assert_eq!(v["bind-address-ipv4"], "127.0.0.1");
        assert_eq!(v["rpc-port"], 1000);
        assert_eq!(v["peer-port"], 1001);
        assert_eq!(v["download-dir"], "/tmp/a \"b\"");
    }
}

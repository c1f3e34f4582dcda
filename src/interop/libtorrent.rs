//! libtorrent peers: `tests/interop/lt_peer.py` run by Debian's `/usr/bin/python3`, one process per
//! peer, reporting JSON lines on stdout that [`LtPeer`] parses.
//!
//! The script's settings (see its source): DHT, LSD, UPnP, NAT-PMP and uTP off; listening on
//! `127.0.0.1:PORT` only; `allow_multiple_connections_per_ip` (every loopback peer is 127.0.0.1);
//! `ssrf_mitigation` off (libtorrent 2.0 otherwise restricts trackers on localhost);
//! `announce_to_all_trackers`/`_tiers`; `min_reconnect_time` 1 s so that a `--connect` peer that was
//! not listening yet is retried quickly; no IP filter; it re-announces every 2 s while it has no peers
//! (opentracker's interval is 1700 s), and it retries `--connect` peers every second. A leecher
//! flushes libtorrent's disk cache before it exits (a `flushed` event; exit code 4 if that does not
//! happen within 10 s), so its files are complete once [`LtPeer::wait_finished`] returns: libtorrent
//! 2.0 reports "finished" as soon as the last piece passed its hash check, possibly before its disk
//! threads wrote it.
//!
//! A peer counts as started once it listens on its port over TCP and uTP (`listening` events);
//! libtorrent is told never to move to another port when its own is taken (it would by default,
//! silently), so that no other program can answer at [`LtPeer::addr`] in its place.
//!
//! Extra switches ([`LtConfig::extra_args`]): `--upload-limit BYTES_PER_S` rate-limits uploads to
//! loopback peers too; `--choke-after BYTES --choke-for SECS` chokes every peer once that many bytes
//! are uploaded (unchoke slots set to 0; libtorrent then rejects the queued requests of peers that
//! speak the fast extension), reporting `choke_all` and `unchoke_all` events.
//! `--encryption forced|enabled|disabled` sets libtorrent's MSE/PE policy both ways (forced: RC4 only).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::ports::free_port;
use super::process::{wait_for, ChildGuard, HarnessError, Result};
use super::require_libtorrent;

/// The peer script, kept in the repository.
pub const LT_PEER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_peer.py");

/// The script's exit code when it cannot listen on its port.
pub const EXIT_PORT_TAKEN: i64 = 5;

/// How many ports [`LtPeer::spawn`] tries.
pub const LISTEN_ATTEMPTS: usize = 3;

/// How long a started script gets to listen (Python and libtorrent start in well under a second;
/// this is a bound for a loaded machine).
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How a start ended, for [`LtPeer::spawn`].
enum Listen {
    /// Listening on its port.
    Listening,
    /// Exited because its port was taken.
    PortTaken,
    /// Exited for another reason (the caller's waits report it, with the log).
    ExitedOtherwise,
}

/// Seed or leech.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LtRole {
    /// Serve the complete data found in the save path.
    Seed,
    /// Download into the save path and exit 0 when finished.
    Leech,
}

/// What to add to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LtSource {
    /// A `.torrent` file.
    Torrent(PathBuf),
    /// A magnet link (the metadata then comes from peers).
    Magnet(String),
}

/// How to run one libtorrent peer.
#[derive(Debug, Clone)]
pub struct LtConfig {
    /// Log and process name (unique per test).
    pub name: String,
    /// Seed or leech.
    pub role: LtRole,
    /// The torrent.
    pub source: LtSource,
    /// Directory with the data (seed) or for it (leech).
    pub save_path: PathBuf,
    /// TCP listen port (on `listen_ip`).
    pub port: u16,
    /// The address it listens on (default 127.0.0.1; `::1` for IPv6 tests).
    pub listen_ip: std::net::IpAddr,
    /// Peers to connect out to (retried every second until connected).
    pub connect: Vec<SocketAddr>,
    /// The script's own bound on its run time; the process guard gets a few seconds more.
    pub max_run: Duration,
    /// Leecher: how long to keep running (and seeding) after finishing.
    pub linger: Duration,
    /// More arguments for the script (e.g. `--upload-limit 300000`, `--choke-after 300000`).
    pub extra_args: Vec<String>,
}

impl LtConfig {
    /// A config with no explicit peers and no linger.
    pub fn new(
        name: &str,
        role: LtRole,
        source: LtSource,
        save_path: &Path,
        port: u16,
        max_run: Duration,
    ) -> LtConfig {
        LtConfig {
            name: name.to_string(),
            role,
            source,
            save_path: save_path.to_path_buf(),
            port,
            listen_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            connect: Vec::new(),
            max_run,
            linger: Duration::ZERO,
            extra_args: Vec::new(),
        }
    }
}

/// One JSON line of the script's output.
#[derive(Debug, Clone, PartialEq)]
pub enum LtLine {
    /// The periodic status line.
    Status(LtStatus),
    /// An alert or lifecycle event (`started`, `listening`, `tracker_reply`, `tracker_error`,
    /// `peer_connect`, `peer_disconnected`, `error`, ...) with its whole JSON object.
    Event {
        /// The `event` field.
        event: String,
        /// The whole line.
        raw: Value,
    },
    /// The leecher finished after `seconds` since the script started.
    Finished {
        /// Seconds from the script's start to `torrent_finished_alert`.
        seconds: f64,
    },
    /// The last line: the exit code and why.
    Exit {
        /// The exit code the script is about to return.
        code: i64,
        /// Why it exits.
        reason: String,
    },
}

/// A status line: libtorrent's `torrent_status` in brief.
#[derive(Debug, Clone, PartialEq)]
pub struct LtStatus {
    /// Seconds since the script started.
    pub t: f64,
    /// libtorrent's state name (`checking_files`, `downloading`, `seeding`, ...).
    pub state: String,
    /// 0.0 ..= 1.0.
    pub progress: f64,
    /// Connected peers.
    pub peers: u64,
    /// Bytes per second, payload and protocol.
    pub download_rate: u64,
    /// Bytes of verified data we have.
    pub total_done: u64,
    /// Whether it is seeding.
    pub is_seeding: bool,
}

fn as_u64(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn as_f64(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn as_str(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Parses one line of the script's output; `None` for anything that is not one of its JSON lines.
pub fn parse_line(line: &str) -> Option<LtLine> {
    let v: Value = serde_json::from_str(line).ok()?;
    match v.get("kind")?.as_str()? {
        "status" => Some(LtLine::Status(LtStatus {
            t: as_f64(&v, "t"),
            state: as_str(&v, "state"),
            progress: as_f64(&v, "progress"),
            peers: as_u64(&v, "peers"),
            download_rate: as_u64(&v, "download_rate"),
            total_done: as_u64(&v, "total_done"),
            is_seeding: v
                .get("is_seeding")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })),
        "event" => Some(LtLine::Event {
            event: as_str(&v, "event"),
            raw: v,
        }),
        "finished" => Some(LtLine::Finished {
            seconds: as_f64(&v, "seconds"),
        }),
        "exit" => Some(LtLine::Exit {
            code: v.get("code").and_then(Value::as_i64).unwrap_or(-1),
            reason: as_str(&v, "reason"),
        }),
        _ => None,
    }
}

/// A running libtorrent peer, stopped by PID when dropped.
#[derive(Debug)]
pub struct LtPeer {
    proc: ChildGuard,
    addr: SocketAddr,
}

impl LtPeer {
    /// Starts the script as configured, logging to `log_dir`, and waits until it listens on its
    /// port (TCP and uTP). When the port was taken meanwhile (the script exits with code 5, see
    /// `lt_peer.py`), it starts again on a fresh [`free_port`] (at most [`LISTEN_ATTEMPTS`] times);
    /// [`LtPeer::addr`] has the port it got. Returns `Ok(None)` when libtorrent is missing and
    /// skipping is allowed (see [`super::missing`]).
    pub fn spawn(cfg: &LtConfig, log_dir: &Path) -> Result<Option<LtPeer>> {
        let Some(python) = require_libtorrent() else {
            return Ok(None);
        };
        let mut cfg = cfg.clone();
        let mut last_err = None;
        for _ in 0..LISTEN_ATTEMPTS {
            let peer = LtPeer::spawn_once(&python, &cfg, log_dir)?;
            match peer.wait_listening()? {
                Listen::Listening | Listen::ExitedOtherwise => return Ok(Some(peer)),
                Listen::PortTaken => {
                    last_err = Some(HarnessError::Tool {
                        what: format!("{} to listen on port {}", cfg.name, cfg.port),
                        detail: peer.proc.log_tail(super::process::LOG_TAIL_LINES),
                    });
                    cfg.port = free_port()?;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| HarnessError::Tool {
            what: format!("start {}", cfg.name),
            detail: "no attempt was made".into(),
        }))
    }

    /// Waits until the script listens on its port over TCP and uTP (libtorrent opens both for
    /// every listen address), or exits.
    fn wait_listening(&self) -> Result<Listen> {
        let port = format!(":{}", self.addr.port());
        let what = format!("{} to listen on {}", self.proc.name(), self.addr);
        wait_for(&what, LISTEN_TIMEOUT, &[], || {
            let lines = self.lines();
            let listening = |kind: &str| {
                lines.iter().any(|l| {
                    matches!(l, LtLine::Event { event, raw } if event == "listening"
                    && raw.get("message").and_then(Value::as_str).is_some_and(|m| {
                        m.contains(kind) && m.trim_end().ends_with(&port)
                    }))
                })
            };
            if listening("[TCP]") && listening("[uTP]") {
                return Ok(Some(Listen::Listening));
            }
            if self.proc.try_status().is_some() {
                // Its exit line (or its log, for the caller's errors) says why.
                let taken = self
                    .lines()
                    .iter()
                    .any(|l| matches!(l, LtLine::Exit { code, .. } if *code == EXIT_PORT_TAKEN));
                return Ok(Some(if taken {
                    Listen::PortTaken
                } else {
                    Listen::ExitedOtherwise
                }));
            }
            Ok(None)
        })
        .map_err(|e| match e {
            HarnessError::Timeout { what, waited, .. } => HarnessError::Timeout {
                what,
                waited,
                logs: super::process::logs_of(&[&self.proc]),
            },
            other => other,
        })
    }

    fn spawn_once(python: &Path, cfg: &LtConfig, log_dir: &Path) -> Result<LtPeer> {
        let mut cmd = Command::new(python);
        cmd.arg(LT_PEER_SCRIPT);
        match &cfg.source {
            LtSource::Torrent(p) => cmd.arg("--torrent").arg(p),
            LtSource::Magnet(m) => cmd.arg("--magnet").arg(m),
        };
        cmd.arg("--role")
            .arg(match cfg.role {
                LtRole::Seed => "seed",
                LtRole::Leech => "leech",
            })
            .arg("--save-path")
            .arg(&cfg.save_path)
            .arg("--port")
            .arg(cfg.port.to_string())
            .arg("--listen")
            .arg(cfg.listen_ip.to_string())
            .arg("--max-seconds")
            .arg(format!("{:.3}", cfg.max_run.as_secs_f64()))
            .arg("--linger")
            .arg(format!("{:.3}", cfg.linger.as_secs_f64()));
        for peer in &cfg.connect {
            cmd.arg("--connect").arg(peer.to_string());
        }
        cmd.args(&cfg.extra_args);
        // Python must not buffer stdout: the harness reads progress while the peer runs.
        cmd.env("PYTHONUNBUFFERED", "1");
        let proc = ChildGuard::spawn(
            &cfg.name,
            &cmd,
            log_dir,
            cfg.max_run + Duration::from_secs(5),
        )?;
        Ok(LtPeer {
            proc,
            addr: SocketAddr::new(cfg.listen_ip, cfg.port),
        })
    }

    /// The process (PID, logs, stop).
    pub fn process(&self) -> &ChildGuard {
        &self.proc
    }

    /// Where it accepts peers (`127.0.0.1:port` unless configured otherwise).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every parsed line so far.
    pub fn lines(&self) -> Vec<LtLine> {
        self.proc
            .stdout_text()
            .lines()
            .filter_map(parse_line)
            .collect()
    }

    /// The latest status line.
    pub fn last_status(&self) -> Option<LtStatus> {
        self.lines().into_iter().rev().find_map(|l| match l {
            LtLine::Status(s) => Some(s),
            _ => None,
        })
    }

    /// The events named `event` so far.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter_map(|l| match l {
                LtLine::Event { event: e, raw } if e == event => Some(raw),
                _ => None,
            })
            .collect()
    }

    /// Waits until a tracker has answered an announce (a `tracker_reply` event), e.g. so that a
    /// seeder is known to the tracker before its leecher announces. Returns the event.
    pub fn wait_tracker_reply(&self, timeout: Duration) -> Result<Value> {
        let what = format!("{} to get a tracker reply", self.proc.name());
        wait_for(&what, timeout, &[&self.proc], || {
            Ok(self.events("tracker_reply").into_iter().next())
        })
    }

    /// Waits until it is seeding (after checking its files).
    pub fn wait_seeding(&self, timeout: Duration) -> Result<LtStatus> {
        let what = format!("{} to be seeding", self.proc.name());
        wait_for(&what, timeout, &[&self.proc], || {
            Ok(self.last_status().filter(|s| s.is_seeding))
        })
    }

    /// Waits for a leecher to finish and exit 0; returns the script's own finish time (seconds
    /// from its start to libtorrent's `torrent_finished_alert`).
    pub fn wait_finished(&self, timeout: Duration, others: &[&ChildGuard]) -> Result<f64> {
        let what = format!("{} to finish downloading", self.proc.name());
        let mut watched = vec![&self.proc];
        watched.extend_from_slice(others);
        let finished = || {
            self.lines().into_iter().find_map(|l| match l {
                LtLine::Finished { seconds } => Some(seconds),
                _ => None,
            })
        };
        // Our own exit is expected once finished: look for the line before treating it as failure.
        let seconds = wait_for(&what, timeout, &watched[1..], || {
            if let Some(s) = finished() {
                return Ok(Some(s));
            }
            if let Some(status) = self.proc.try_status() {
                return Err(HarnessError::Exited {
                    name: self.proc.name().to_string(),
                    status: status.to_string(),
                    what: what.clone(),
                    logs: super::process::logs_of(&watched),
                });
            }
            Ok(None)
        })?;
        let status = self.proc.wait_exit(Duration::from_secs(10))?;
        if status.success() {
            Ok(seconds)
        } else {
            Err(HarnessError::Tool {
                what,
                detail: format!(
                    "finished but exited {status}\n{}",
                    self.proc.log_tail(super::process::LOG_TAIL_LINES)
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_line() {
        let s = parse_line(
            r#"{"kind":"status","t":1.5,"state":"downloading","progress":0.25,"peers":2,
                "download_rate":1000,"total_done":4096,"is_seeding":false}"#,
        );
        assert_eq!(
            s,
            Some(LtLine::Status(LtStatus {
                t: 1.5,
                state: "downloading".into(),
                progress: 0.25,
                peers: 2,
                download_rate: 1000,
                total_done: 4096,
                is_seeding: false,
            }))
        );
        assert!(matches!(
            parse_line(r#"{"kind":"event","event":"tracker_reply","peers":1,"t":0.5}"#),
            Some(LtLine::Event { event, .. }) if event == "tracker_reply"
        ));
        assert_eq!(
            parse_line(r#"{"kind":"finished","seconds":0.56,"t":0.56}"#),
            Some(LtLine::Finished { seconds: 0.56 })
        );
        assert_eq!(
            parse_line(r#"{"kind":"exit","code":2,"reason":"late","t":9}"#),
            Some(LtLine::Exit {
                code: 2,
                reason: "late".into()
            })
        );
        assert_eq!(parse_line("Traceback (most recent call last):"), None);
        assert_eq!(parse_line(r#"{"kind":"other"}"#), None);
    }
}
